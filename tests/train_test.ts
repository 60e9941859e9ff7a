import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { adam, disposeTensors } from "../lib/optim.ts";
import { disposeParams, type Params, toVariables } from "../lib/params.ts";
import { fold, normal, rng } from "../lib/random.ts";
import {
  initTrainState,
  NonFiniteError,
  runLoop,
  type StepOptions,
  type TrainState,
  trainStep,
} from "../lib/train.ts";

await initEngine({ backend: "wasm", announce: false });

// A least-squares problem whose data for step i depends only on (seed, i), as in real runs.
const trueW = tf.tensor2d([[1.5], [-2], [0.5]]);
const lossAt = (params: Params, step: number) => () =>
  tf.tidy(() => {
    const x = normal(fold(rng(0), step), [16, 3]) as tf.Tensor2D;
    const y = tf.matMul(x, trueW);
    const pred = tf.add(tf.matMul(x, params.w as unknown as tf.Tensor2D), params.b);
    return tf.mean(tf.square(tf.sub(pred, y))) as tf.Scalar;
  });

const fresh = () => toVariables({ w: tf.zeros([3, 1]), b: tf.zeros([1]) });
const opts: StepOptions = { optimizer: adam({ lr: 0.05 }), clipNorm: 10, emaRate: 0.9 };
const dispose = (s: TrainState) => {
  disposeTensors(s.opt);
  if (s.ema) disposeTensors(s.ema);
  disposeParams(s.params);
};

Deno.test("trainStep() lowers the loss and leaks no tensors across steps", () => {
  let state = initTrainState(fresh(), opts);
  const first = trainStep(state, lossAt(state.params, 0), opts);
  state = first.state;
  const counts: number[] = [];
  let last = first.loss;
  for (let i = 1; i < 200; i++) {
    const r = trainStep(state, lossAt(state.params, i), opts);
    state = r.state;
    last = r.loss;
    counts.push(tf.memory().numTensors);
  }
  assert(last < first.loss * 0.05, `loss ${first.loss} -> ${last}`);
  assertEquals(new Set(counts).size, 1, "tensor count changed across steps");
  assertEquals(state.step, 200);
  dispose(state);
});

Deno.test("trainStep() with a trainable subset leaves the other parameters frozen", () => {
  const sub: StepOptions = { ...opts, trainable: ["w"] };
  let state = initTrainState(fresh(), sub);
  for (let i = 0; i < 5; i++) state = trainStep(state, lossAt(state.params, i), sub).state;
  assertClose(state.params.b, [0]);
  assert(Math.abs(state.params.w.dataSync()[0]) > 0);
  dispose(state);
});

Deno.test("runLoop() checkpoints on schedule, and a resumed run ends where an unbroken one does", async () => {
  const step = (s: TrainState) => {
    const r = trainStep(s, lossAt(s.params, s.step), opts);
    return { state: r.state, metrics: { loss: r.loss } };
  };
  const unbroken = await runLoop(initTrainState(fresh(), opts), {
    label: "t",
    totalSteps: 30,
    step,
    quiet: true,
  });

  // First half, with checkpoints kept as plain arrays; then resume from the last one.
  const saved: {
    step: number;
    w: Float32Array;
    b: Float32Array;
    slots: Record<string, Float32Array>;
    count: number;
  }[] = [];
  const save = (s: TrainState) => {
    const slots: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(s.opt.slots)) slots[k] = v.dataSync() as Float32Array;
    saved.push({
      step: s.step,
      w: s.params.w.dataSync() as Float32Array,
      b: s.params.b.dataSync() as Float32Array,
      slots,
      count: s.opt.count,
    });
    return Promise.resolve();
  };
  const half = await runLoop(initTrainState(fresh(), opts), {
    label: "t",
    totalSteps: 17,
    step,
    save,
    checkpointEvery: 5,
    quiet: true,
  });
  assertEquals(saved.map((s) => s.step), [5, 10, 15, 17]);
  dispose(half.state);

  const ck = saved[saved.length - 1];
  const params = toVariables({ w: tf.tensor2d(ck.w, [3, 1]), b: tf.tensor1d(ck.b) });
  const slots: Record<string, tf.Tensor> = {};
  for (const [k, v] of Object.entries(ck.slots)) {
    slots[k] = tf.tensor(v, k.endsWith(".w") ? [3, 1] : [1]);
  }
  const resumed = await runLoop<TrainState>(
    { params, opt: { count: ck.count, slots }, step: ck.step },
    { label: "t", totalSteps: 30, step, quiet: true },
  );
  assertClose(resumed.state.params.w, unbroken.state.params.w, { rtol: 1e-6 });
  dispose(resumed.state);
  dispose(unbroken.state);
});

Deno.test("trainStep() stops on a non-finite loss or gradient before touching weights, moments or EMA", () => {
  let s = initTrainState(fresh(), opts);
  s = trainStep(s, lossAt(s.params, 0), opts).state; // moments and EMA away from their init
  const snapshot = (st: TrainState) =>
    [st.params, st.ema!, st.opt.slots].flatMap((g) =>
      Object.keys(g).sort().map((k) => Array.from(g[k].dataSync()))
    );
  const before = snapshot(s);
  const tensors = tf.memory().numTensors;
  const poisoned: [string, () => tf.Scalar, RegExp][] = [
    ["NaN loss", () => tf.mul(lossAt(s.params, 1)(), NaN) as tf.Scalar, /loss is NaN at step 2/],
    // A finite loss (0) whose gradient is not: d√u/du = ∞ at u = 0, times 0 gives NaN.
    [
      "NaN gradient",
      () => tf.sum(tf.sqrt(tf.mul(tf.square(s.params.w), 0))) as tf.Scalar,
      /gradient norm is NaN at step 2/,
    ],
  ];
  for (const [name, loss, message] of poisoned) {
    for (const o of [opts, { ...opts, clipNorm: undefined }]) {
      let thrown: unknown;
      try {
        trainStep(s, loss, o);
      } catch (e) {
        thrown = e;
      }
      assert(thrown instanceof NonFiniteError, `${name}: ${thrown}`);
      assert(message.test((thrown as Error).message), `${name}: ${(thrown as Error).message}`);
      assertEquals(snapshot(s), before, `${name}: state changed`);
      assertEquals(tf.memory().numTensors, tensors, `${name}: leaked`);
    }
  }
  dispose(s);
});

Deno.test("trainStep() averages with the warmed-up EMA rate of each step", () => {
  let s = initTrainState(fresh(), opts);
  // Follow the average by hand in float64 from the weights after each step.
  let expected = Array.from(s.params.w.dataSync(), Number);
  for (let step = 0; step < 4; step++) {
    s = trainStep(s, lossAt(s.params, step), opts).state;
    const r = Math.min(0.9, (1 + step) / (10 + step));
    const w = s.params.w.dataSync();
    expected = expected.map((e, i) => r * e + (1 - r) * w[i]);
  }
  assertClose(s.ema!.w, expected, { rtol: 1e-5 });
  dispose(s);
});
