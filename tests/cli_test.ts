import { assertEquals, assertThrows } from "./assert.ts";
import { COMMON_FLAGS, type FlagSpecs, parseCli, usage, UsageError } from "../lib/cli.ts";

const specs = {
  ...COMMON_FLAGS,
  steps: { kind: "int", default: 100, help: "steps", min: 1 },
  lr: { kind: "float", default: 1e-4, help: "learning rate", min: 0 },
  dataset: { kind: "string", default: "mnist", help: "dataset" },
  resume: { kind: "boolean", help: "resume" },
} as const;

Deno.test("parseCli() applies defaults and converts numbers", () => {
  const v = parseCli("t", "", specs, ["--steps", "5", "--lr=0.01", "--resume"]);
  assertEquals(v, {
    seed: 0,
    backend: undefined,
    steps: 5,
    lr: 0.01,
    dataset: "mnist",
    resume: true,
  });
});

Deno.test("parseCli() reports every bad flag at once", () => {
  assertThrows(
    () =>
      parseCli("t", "", specs, [
        "--steps",
        "0",
        "--lr",
        "fast",
        "--seed",
        "1.5",
        "--backend",
        "tpu",
      ]),
    (e: unknown) => {
      assertEquals(e instanceof UsageError, true);
      assertEquals((e as Error).message.split("\n"), [
        '--seed: "1.5" is not an integer',
        '--backend: "tpu" is not one of tensorflow, webgpu, wasm, cpu',
        "--steps: 0 is below the minimum 1",
        '--lr: "fast" is not a number',
      ]);
      return true;
    },
  );
});

// The UsageError's lines for `args`.
function usageErrors(args: string[], flags: FlagSpecs = specs): string[] {
  try {
    parseCli("t", "", flags, args);
  } catch (e) {
    assertEquals(e instanceof UsageError, true, String(e));
    return (e as Error).message.split("\n");
  }
  throw new Error(`no UsageError for ${JSON.stringify(args)}`);
}

Deno.test("parseCli() rejects unknown flags and positionals", () => {
  assertEquals(usageErrors(["--stepz", "3"]), ["--stepz: unknown flag (did you mean --steps?)"]);
  assertEquals(usageErrors(["extra"]), ['unexpected argument "extra"']);
  assertEquals(usageErrors(["-x"]), ["-x: unknown flag"]);
  assertEquals(usageErrors(["--toString"]), ["--toString: unknown flag"]);
});

Deno.test("parseCli() reports unknown flags together with every other bad flag", () => {
  assertEquals(
    usageErrors([
      "--stepz=3",
      "--steps",
      "0",
      "--lr",
      "fast",
      "--colour",
      "red",
      "--resume=yes",
      "extra",
      "--seed",
    ]),
    [
      "--stepz: unknown flag (did you mean --steps?)",
      "--colour: unknown flag",
      '--resume: takes no value, got "yes"',
      'unexpected argument "extra"',
      "--seed: missing value",
      "--steps: 0 is below the minimum 1",
      '--lr: "fast" is not a number',
    ],
  );
  assertEquals(usageErrors(["--dataset", "--resume"]), [
    '--dataset: missing value before "--resume" (write --dataset=--resume for a value with a dash)',
  ]);
  // A negative number is a value, not a flag.
  assertEquals(parseCli("t", "", specs, ["--seed", "-3"]).seed, -3);
});

const ranged = {
  p: { kind: "float", default: 0.5, help: "probability", minExclusive: 0, max: 1 },
  k: { kind: "int", default: 1, help: "shards", min: 1, maxExclusive: 10 },
  lr: { kind: "float", default: 1e-4, help: "learning rate", minExclusive: 0 },
  n: { kind: "int", default: 8, help: "workers", max: 8 },
  drop: { kind: "float", default: 0, help: "dropout", min: 0, maxExclusive: 1 },
  d: { kind: "float", default: 0, help: "decay", maxExclusive: 1 },
} as const satisfies FlagSpecs;

Deno.test("parseCli() checks min, max and exclusive bounds, naming the flag", async (t) => {
  const cases: [string[], string[]][] = [
    [["--p", "0"], ["--p: 0 is outside (0, 1]"]],
    [["--p", "1.5"], ["--p: 1.5 is outside (0, 1]"]],
    [["--k", "10"], ["--k: 10 is outside [1, 10)"]],
    [["--k", "0"], ["--k: 0 is outside [1, 10)"]],
    [["--lr", "0"], ["--lr: 0 must be above 0"]],
    [["--n", "9"], ["--n: 9 is above the maximum 8"]],
    [["--d", "1"], ["--d: 1 must be below 1"]],
    [["--p", "-1", "--n", "100", "--drop", "1"], [
      "--p: -1 is outside (0, 1]",
      "--n: 100 is above the maximum 8",
      "--drop: 1 is outside [0, 1)",
    ]],
  ];
  for (const [args, errors] of cases) {
    await t.step(args.join(" "), () => assertEquals(usageErrors(args, ranged), errors));
  }
  const v = parseCli("t", "", ranged, ["--p", "1", "--k", "9", "--lr", "1e-9", "--n", "8"]);
  assertEquals([v.p, v.k, v.lr, v.n, v.drop, v.d], [1, 9, 1e-9, 8, 0, 0]);
  const twoLower = { x: { kind: "int", help: "x", min: 0, minExclusive: 0 } } as const;
  assertThrows(() => parseCli("t", "", twoLower, []), {
    message: "Flag --x: give min or minExclusive, not both",
  });
});

Deno.test("usage() shows each flag's range", () => {
  const lines = usage("t", "about", ranged).split("\n");
  const row = (flag: string) =>
    lines.find((l) => l.startsWith(`  --${flag} `))!.replace(/ +/g, " ").trim();
  assertEquals(row("p"), "--p <float> probability (default: 0.5, in (0, 1])");
  assertEquals(row("lr"), "--lr <float> learning rate (default: 0.0001, > 0)");
  assertEquals(row("n"), "--n <int> workers (default: 8, <= 8)");
  assertEquals(row("k"), "--k <int> shards (default: 1, in [1, 10))");
});

Deno.test("parseCli() lists faults between flags in the same error as the single-flag ones", () => {
  const flags = {
    steps: { kind: "int", default: 10, help: "", min: 1 },
    every: { kind: "int", default: 5, help: "" },
    lr: { kind: "float", default: 0.1, help: "", minExclusive: 0 },
  } as const;
  const check = (v: { steps?: number; every?: number }) =>
    v.steps !== undefined && v.every !== undefined && v.every > v.steps
      ? [`--every: ${v.every} is more than --steps ${v.steps}`]
      : [];
  const message = (args: string[]) => {
    try {
      parseCli("t", "", flags, args, check);
    } catch (e) {
      if (e instanceof UsageError) return e.message;
      throw e;
    }
    throw new Error("no UsageError");
  };
  assertEquals(message(["--every", "20", "--lr", "-1", "--bogus"]).split("\n"), [
    "--bogus: unknown flag",
    "--lr: -1 must be above 0",
    "--every: 20 is more than --steps 10",
  ]);
  // A flag that failed to parse is left out of the check, which then cannot misjudge it.
  const m2 = message(["--steps", "x", "--every", "20"]);
  assertEquals(m2.split("\n").length, 1, m2);
  assertEquals(parseCli("t", "", flags, ["--every", "3"], check).every, 3);
});
