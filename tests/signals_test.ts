// runLoop's signal rules, made deterministic with a handshake: a child process runs a loop whose
// save announces itself on stderr and then takes 2 s; the test sends its signals at the moments
// the child reports, never at guessed times.
import { assert, assertEquals } from "./assert.ts";

const train = new URL("../lib/train.ts", import.meta.url).href;
const dec = new TextDecoder();

// A loop of 1000 slow steps that saves every 5 steps; each save prints SAVE <step>, sleeps 2 s,
// then writes the step to `out` and prints SAVED <step>.
const child = (dir: string) => `
import { runLoop } from "${train}";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const r = await runLoop({ step: 0 }, {
  label: "t",
  totalSteps: 1000,
  quiet: true,
  checkpointEvery: 5,
  step: async (s) => { await sleep(20); console.error("STEP " + (s.step + 1)); return { state: { step: s.step + 1 }, metrics: {} }; },
  save: async (s) => {
    console.error("SAVE " + s.step);
    await sleep(2000);
    await Deno.writeTextFile("${dir}/saved", String(s.step));
    console.error("SAVED " + s.step);
  },
});
console.error("RETURNED " + r.signal + " " + r.state.step);
`;

/** Spawn the child; `on(line, kill)` sees each stderr line as it comes. */
async function runChild(on: (line: string, kill: (s: Deno.Signal) => void) => void) {
  const dir = await Deno.makeTempDir();
  const script = `${dir}/loop.ts`;
  await Deno.writeTextFile(script, child(dir));
  const p = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--config",
      new URL("../deno.json", import.meta.url).pathname,
      "-R",
      "-W",
      "-E",
      script,
    ],
    stderr: "piped",
    stdout: "null",
  }).spawn();
  let log = "", pending = "";
  for await (const chunk of p.stderr) {
    pending += dec.decode(chunk);
    const lines = pending.split("\n");
    pending = lines.pop()!;
    for (const l of lines) {
      log += l + "\n";
      on(l, (s) => p.kill(s));
    }
  }
  const { code } = await p.status;
  let saved: string | undefined;
  try {
    saved = await Deno.readTextFile(`${dir}/saved`);
  } catch { /* none */ }
  await Deno.remove(dir, { recursive: true });
  return { code, log, saved };
}

const later = (ms: number, f: () => void) => setTimeout(f, ms);

Deno.test("a second SIGINT during a save waits for the save, then exits 130", async () => {
  // The first signal lands after step 7 (not a scheduled save); the loop saves on its way out,
  // and the second signal arrives 700 ms into that 2 s save.
  let sent = false, saving = "";
  const r = await runChild((line, kill) => {
    if (line === "STEP 7") {
      kill("SIGINT");
      sent = true;
    } else if (sent && !saving && line.startsWith("SAVE ")) {
      saving = line.slice(5);
      later(700, () => kill("SIGINT"));
    }
  });
  assertEquals(r.code, 130, r.log);
  assert(Number(saving) >= 7, r.log);
  assertEquals(r.saved, saving, "the save in flight completed");
  assert(r.log.includes("aborting once the save is on disk"), r.log);
  assert(r.log.includes(`SAVED ${saving}`) && !r.log.includes("RETURNED"), r.log);
});

Deno.test("SIGTERM then SIGINT during a scheduled save: the save completes, then the run stops", async () => {
  // Both signals land inside the save of step 5 (the schedule's), 600 ms apart.
  const r = await runChild((line, kill) => {
    if (line === "SAVE 5") {
      later(300, () => kill("SIGTERM"));
      later(1000, () => kill("SIGINT"));
    }
  });
  assertEquals(r.code, 143, r.log);
  assertEquals(r.saved, "5");
  assert(r.log.includes("SAVED 5"), r.log);
});

Deno.test("the same signal twice within 500 ms (deno task's copy) counts once: the run saves and returns", async () => {
  const r = await runChild((line, kill) => {
    if (line === "STEP 3") {
      kill("SIGINT");
      kill("SIGINT");
    }
  });
  // It stops after step 3 or 4 (the step in flight when the signal lands), saved and returned.
  assertEquals(r.code, 0, r.log);
  assert(r.saved === "3" || r.saved === "4", r.log);
  assert(r.log.includes(`RETURNED SIGINT ${r.saved}`), r.log);
});
