// Signals at random moments of a tiny `deno task pretrain`: kill -9, SIGTERM, a Ctrl-C delivered
// twice (as `deno task` does), and a second Ctrl-C during the run. Each interrupted run is then
// resumed to the end, and its final checkpoint must hold the very tensors and loss curve of an
// unbroken run. The moments are drawn from a seeded key, so a failure replays.
import { assert, assertEquals } from "./assert.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { rng, uniformArray } from "../lib/random.ts";
import { scriptCommand } from "./script.ts";

const FLAGS = [
  "--config",
  "tiny",
  "--steps",
  "30",
  "--batch",
  "4",
  "--checkpoint-every",
  "3",
  "--log-every",
  "2",
  "--samples",
  "0",
  "--quiet",
  "--seed",
  "1",
];

function start(dir: string): Deno.ChildProcess {
  return scriptCommand("pretrain", [...FLAGS, "--out", `${dir}/ck`], {
    env: { DP_RESULTS_DIR: `${dir}/results` },
    stdout: "null",
  }).spawn();
}

async function finish(child: Deno.ChildProcess): Promise<{ code: number; log: string }> {
  const out = await child.output();
  return { code: out.code, log: new TextDecoder().decode(out.stderr) };
}

/** Tensors and loss curve of a run's final checkpoint (its times and provenance differ). */
async function outcome(dir: string) {
  const { tensors, metadata } = await readSafetensors(`${dir}/ck/checkpoint.safetensors`);
  const meta = JSON.parse(metadata.meta);
  return {
    step: metadata.step,
    curve: meta.lossCurve,
    window: meta.lossWindow,
    tensors: Object.fromEntries(
      Object.entries(tensors).map(([k, t]) => [k, new Uint8Array(t.data.buffer)]),
    ),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("pretrain interrupted by signals at random moments resumes to the unbroken run's checkpoint", async () => {
  const base = await Deno.makeTempDir();
  const counts = { signals: 0, resumes: 0 };
  const codes: number[] = [];
  try {
    const ref = `${base}/unbroken`;
    const whole = await finish(start(ref));
    assertEquals(whole.code, 0, whole.log);
    const want = await outcome(ref);
    // Startup takes ~2–4 s here, 30 tiny steps ~3 s more: moments in [1.5, 6) s hit both.
    const moments = uniformArray(rng(42), 8).map((u) => 1500 + 4500 * u);
    const cases: [string, (c: Deno.ChildProcess, at: number) => Promise<void>][] = [
      ["kill -9", async (c, at) => {
        await sleep(at);
        c.kill("SIGKILL");
        counts.signals++;
      }],
      ["SIGTERM", async (c, at) => {
        await sleep(at);
        c.kill("SIGTERM");
        counts.signals++;
      }],
      ["SIGINT twice at once (deno task)", async (c, at) => {
        await sleep(at);
        c.kill("SIGINT");
        c.kill("SIGINT");
        counts.signals += 2;
      }],
      ["SIGINT, then SIGINT again 0.7 s later", async (c, at) => {
        await sleep(at);
        c.kill("SIGINT");
        await sleep(700);
        try {
          c.kill("SIGINT");
          counts.signals++;
        } catch { /* it had already stopped */ }
        counts.signals++;
      }],
    ];
    for (const [i, [name, interrupt]] of cases.entries()) {
      for (const at of [moments[2 * i], moments[2 * i + 1]]) {
        const dir = `${base}/case${i}-${Math.round(at)}`;
        const child = start(dir);
        const [r] = await Promise.all([finish(child), interrupt(child, at).catch(() => {})]);
        // Stopped by the signal (killed, 143, 130) or finished before it came (0): never a crash.
        assert(
          [0, 130, 143, 137].includes(r.code) || r.code === -1 || r.code === 9,
          `${name}: exit ${r.code}\n${r.log}`,
        );
        // (The GPU probe's "XDG_RUNTIME_DIR is invalid" on machines without a session is noise.)
        assert(
          !/^error: (?!XDG_RUNTIME_DIR)/m.test(r.log),
          `${name} at ${Math.round(at)} ms: ${r.log}`,
        );
        codes.push(r.code);
        const again = await finish(start(dir));
        assertEquals(again.code, 0, `${name}: resume failed\n${again.log}`);
        counts.resumes++;
        const got = await outcome(dir);
        assertEquals(got.step, want.step, name);
        assertEquals(got.curve, want.curve, `${name}: loss curve`);
        assertEquals(got.window, want.window, name);
        assertEquals(Object.keys(got.tensors), Object.keys(want.tensors));
        for (const k of Object.keys(want.tensors)) {
          assertEquals(got.tensors[k], want.tensors[k], `${name} at ${Math.round(at)} ms: ${k}`);
        }
        // No temp file of an interrupted write survives the resume.
        const left = [...Deno.readDirSync(`${dir}/ck`)].map((e) => e.name);
        assertEquals(left, ["checkpoint.safetensors"], `${name}: left ${left}`);
      }
    }
    console.log(
      `reliability: ${counts.signals} signals sent, ${counts.resumes} resumes compared bit for bit, ` +
        `exit codes ${codes.join(" ")}`,
    );
    // The moments must land mostly inside the runs, or the test would check little.
    assert(
      codes.filter((c) => c !== 0).length >= 4,
      `runs finished before their signals: ${codes}`,
    );
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});
