import { assert, assertEquals } from "./assert.ts";
import { formatDuration, progress } from "../lib/progress.ts";

Deno.test("formatDuration() writes compact durations", () => {
  assertEquals(formatDuration(12.4), "12s");
  assertEquals(formatDuration(245), "4m05s");
  assertEquals(formatDuration(3725), "1h02m");
  assertEquals(formatDuration(Infinity), "?");
});

Deno.test("progress() without a terminal prints plain lines with step, rate, ETA and metrics", () => {
  const lines: string[] = [];
  const original = console.error;
  console.error = (...a: unknown[]) => lines.push(a.join(" "));
  try {
    const p = progress({ label: "train", total: 4, start: 1, tty: false, every: 3600 });
    p.tick(2, { loss: 0.5 }); // first tick prints at once
    p.tick(3, { loss: 0.25 }); // within `every`: silent
    p.tick(4, { loss: 0.125 }); // last step always prints
    p.done();
  } finally {
    console.error = original;
  }
  assertEquals(lines.length, 2);
  assert(
    /^train step 2\/4 \| [0-9.]+ steps\/s \| ETA \S+ \| loss 0\.5000$/.test(lines[0]),
    lines[0],
  );
  assert(lines[1].startsWith("train step 4/4 |") && lines[1].endsWith("loss 0.1250"), lines[1]);
});

Deno.test("progress() with quiet prints nothing", () => {
  const original = console.error;
  let printed = false;
  console.error = () => (printed = true);
  try {
    const p = progress({ label: "x", total: 2, quiet: true, tty: false });
    p.tick(1);
    p.tick(2);
    p.done();
  } finally {
    console.error = original;
  }
  assertEquals(printed, false);
});
