import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { oneLine, shortList } from "../lib/messages.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { loadParamsStrict } from "../lib/io/checkpoint.ts";

await initEngine({ backend: "wasm", announce: false });

Deno.test("shortList() shows the first n items and counts the rest", () => {
  assert.equal(shortList([]), "");
  assert.equal(shortList(["a", "b", "c"], 3), "a, b, c");
  assert.equal(shortList(["a", "b", "c", "d"], 2), "a, b, … and 2 more");
  assert.equal(shortList(["a", "b", "c"], 1, "; "), "a; … and 2 more");
  const many = Array.from({ length: 417 }, (_, i) => `k${i}`);
  assert.equal(shortList(many), "k0, k1, k2, k3, k4, … and 412 more");
});

Deno.test("oneLine() folds a multi-line message", () => {
  assert.equal(oneLine("bad header\n  at byte 8\n\n"), "bad header; at byte 8");
});

Deno.test("loadParamsStrict() keeps the message short when hundreds of keys are off", () => {
  const expected = Object.fromEntries(
    Array.from(
      { length: 400 },
      (_, i) => [`output_blocks.${i}.0.out_layers.3.weight`, [3, 3, 8, 8]],
    ),
  );
  const tensors = Object.fromEntries(
    Array.from(
      { length: 300 },
      (_, i) => [`model.diffusion_model.block${i}.weight`, tf.zeros([1])],
    ),
  );
  assert.throws(() => loadParamsStrict(expected, tensors, "weights.safetensors"), (e: Error) => {
    assert.ok(e.message.length < 1000, `${e.message.length} characters: ${e.message}`);
    assert.match(e.message, /^Parameters in weights\.safetensors do not match the model: /);
    assert.match(
      e.message,
      /400 missing \(output_blocks\.0\.0\.out_layers\.3\.weight, .*… and 395 more\)/,
    );
    assert.match(
      e.message,
      /300 unexpected \(model\.diffusion_model\.block0\.weight, .*… and 295 more\)/,
    );
    assert.ok(!e.message.includes("\n"));
    return true;
  });
  tf.dispose(Object.values(tensors));
});
