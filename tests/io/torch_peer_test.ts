// End to end against PyTorch (skipped where python3 has no torch, e.g. CI): a U-Net built in
// PyTorch by bench/peer_torch.py, saved as .pt, converted by scripts/pt_to_safetensors.py and
// loaded by loadWeights must compute the same output as PyTorch.
import * as tf from "@tensorflow/tfjs";
import { assertClose, assertEquals } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import * as unet from "../../lib/models/unet.ts";
import { disposeParams } from "../../lib/params.ts";
import { loadWeights } from "../../lib/io/torch_layout.ts";

const root = new URL("../../", import.meta.url).pathname;
const python = ["/usr/bin/python3", "python3"].find((p) => {
  try {
    return new Deno.Command(p, { args: ["-c", "import torch"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
});

// Half-precision weights, class labels and the legacy attention order: the checkpoint's cases.
const cfg: unet.UNetConfig = {
  ...unet.UNET_CONFIGS.tiny,
  numClasses: 4,
  learnSigma: true,
  numHeads: 4,
};

const PEER = `
import importlib.util, json, math, sys, torch
spec = importlib.util.spec_from_file_location("peer", sys.argv[1] + "bench/peer_torch.py")
peer = importlib.util.module_from_spec(spec); spec.loader.exec_module(peer)
torch.manual_seed(0)
model = peer.UNet(json.loads(sys.argv[2])).eval()
with torch.no_grad():
    for p in model.parameters():
        p.copy_(torch.randn_like(p) * 0.1)
model.half()
torch.save(model.state_dict(), sys.argv[3])
model.float()
x = torch.sin(torch.arange(2 * 16 * 16, dtype=torch.float32) * 0.37).reshape(2, 1, 16, 16)
with torch.no_grad():
    out = model(x, torch.tensor([7, 700]), torch.tensor([1, 3]))
print(json.dumps(out.permute(0, 2, 3, 1).reshape(-1).tolist()))
`;

Deno.test({
  name: "a PyTorch U-Net state_dict, converted from .pt, loads and computes PyTorch's output",
  ignore: python === undefined,
  fn: async () => {
    await initEngine({ backend: "wasm", announce: false });
    const dir = await Deno.makeTempDir();
    try {
      const run = (args: string[]) => {
        const r = new Deno.Command(python!, { args, cwd: root, stdout: "piped", stderr: "piped" })
          .outputSync();
        if (!r.success) throw new Error(new TextDecoder().decode(r.stderr));
        return new TextDecoder().decode(r.stdout);
      };
      const expected = JSON.parse(
        run(["-c", PEER, root, JSON.stringify(cfg), `${dir}/m.pt`]),
      ) as number[];
      run(["scripts/pt_to_safetensors.py", `${dir}/m.pt`, `${dir}/m.safetensors`]);
      const params = await loadWeights(`${dir}/m.safetensors`, unet.paramShapes(cfg), {
        sameLayout: unet.TORCH_SAME_LAYOUT,
      });
      const out = tf.tidy(() => {
        const x = tf.reshape(tf.sin(tf.mul(tf.range(0, 2 * 16 * 16), 0.37)), [
          2,
          16,
          16,
          1,
        ]) as tf.Tensor4D;
        const eps = unet.apply(cfg, params, x, tf.tensor1d([7, 700], "int32"), {
          y: tf.tensor1d([1, 3], "int32"),
        }).eps!;
        return eps.dataSync();
      });
      disposeParams(params);
      assertEquals(out.length, expected.length);
      // PyTorch ran in float32 on the fp16-rounded weights that the file holds.
      assertClose(out, expected, { rtol: 1e-3, atol: 1e-4 });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
