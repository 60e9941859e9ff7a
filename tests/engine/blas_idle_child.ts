// Child of tests/engine/blas_test.ts: CPU time OpenBLAS's workers burn while the library idles.
// Loads OpenBLAS as the engine does, runs threaded products, then prints the CPU milliseconds all
// threads but the main one used during the next 300 ms of sleep (a spinning worker shows as
// ~100 ms of its 2^28-cycle timeout). Its own process: OpenBLAS reads its settings once, at load.
import { openBlas } from "../../lib/engine/blas/openblas.ts";

const blas = openBlas();
if (!blas) throw new Error("blas_idle_child.ts: no OpenBLAS");
blas.setThreads(2);
const n = 512, a = new Float32Array(n * n).fill(1), c = new Float32Array(n * n);
for (let i = 0; i < 3; i++) blas.sgemm(false, false, n, n, n, 1, a, n, a, n, 0, c, n);

/** CPU ticks (utime + stime) of every thread of this process except the main one. */
function workerTicks(): number {
  let ticks = 0;
  for (const t of Deno.readDirSync("/proc/self/task")) {
    if (Number(t.name) === Deno.pid) continue;
    const stat = Deno.readTextFileSync(`/proc/self/task/${t.name}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks;
}

const before = workerTicks();
await new Promise((r) => setTimeout(r, 300));
console.log(`idle worker cpu ms: ${(workerTicks() - before) * 10}`); // USER_HZ is 100 on Linux
