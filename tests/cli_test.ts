import { assertEquals, assertThrows } from "./assert.ts";
import { COMMON_FLAGS, parseCli, UsageError } from "../lib/cli.ts";

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

Deno.test("parseCli() rejects unknown flags and positionals", () => {
  assertThrows(() => parseCli("t", "", specs, ["--stepz", "3"]), UsageError);
  assertThrows(() => parseCli("t", "", specs, ["extra"]), UsageError);
});
