
import * as tf from "@tensorflow/tfjs";
import { initEngine } from "./lib/engine/mod.ts";
const info = await initEngine({ announce: false });
const a = tf.randomNormal([64, 96], 0, 1, "float32", 1), b = tf.randomNormal([96, 48], 0, 1, "float32", 2);
const x = tf.randomNormal([2, 12, 12, 8], 0, 1, "float32", 3) as tf.Tensor4D;
const w = tf.randomNormal([3, 3, 8, 16], 0, 1, "float32", 4) as tf.Tensor4D;
const run = () => [tf.matMul(a, b), tf.conv2d(x, w, 1, "same")].map((t) => Array.from(t.dataSync()));
const wasm = run();
await tf.setBackend("cpu");
const cpu = run();
const err = Math.max(...wasm.flatMap((v, i) => v.map((y, j) => Math.abs(y - cpu[i][j]))));
console.log(JSON.stringify({ engine: info.engine, threads: info.details.wasmThreads, err }));
