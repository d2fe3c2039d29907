#!/usr/bin/env python3
"""Train the demo classifier and write it as ONNX, with its test inputs,
its SHA-256 and a one-byte weight-flip attack against it.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -r requirements.txt
    /tmp/venv/bin/python make_model.py            # rewrite the files here
    /tmp/venv/bin/python make_model.py --check    # regenerate in a temp dir, compare

Outputs (next to this script unless --out is given):

    classifier.onnx         4 features -> 32 -> 32 -> 3 classes, float32, opset 13
    classifier.onnx.sha256  `sha256sum -c` format
    test-inputs.json        fixed inputs with the class the model gives each
    attack.json             which byte to overwrite to change one input's class

The output is byte-for-byte reproducible with the pinned numpy and onnx,
and is meant to stay so across CPUs: the data come from numpy's PCG64 bit generator (the same bits
everywhere), and training uses only +, -, *, / and sqrt, which IEEE 754
rounds the same way on every machine. Matrix products are written as
broadcasts and ordered sums instead of `@`, because `@` goes to OpenBLAS,
whose kernels (and so whose rounding) depend on the CPU it finds at run
time; and the softmax uses a hand-written exp for the same reason (numpy's
own exp has CPU-specific SIMD variants that may differ in the last bit).
The ONNX file carries no timestamp or version string that would change
between runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20260811
FEATURES = 4
HIDDEN = 32
CLASSES = 3
TRAIN_PER_CLASS = 200
# Few steps at a small rate: the blobs overlap, and a longer run only
# memorises the training points (100% there, worse on fresh points) and
# pushes every softmax score to 1.0, which makes a poor demo.
STEPS = 150
LEARNING_RATE = 0.003
HELDOUT_PER_CLASS = 1000
# Test inputs: this many per class, each classified with at least this
# logit margin, so a float32 runtime other than numpy gives the same class.
TEST_PER_CLASS = 4
TEST_MARGIN = 1.0
# The attack must leave every class decision clear by this logit margin,
# for the same reason.
ATTACK_MARGIN = 0.5
# Replacement weights larger than this are not considered: a flip to
# 1e38 or infinity would be noticed in any output, the point of the attack
# is that nothing but the victim's answer changes.
ATTACK_MAX_ABS = 1000.0

MODEL = "classifier.onnx"
OPSET = 13
IR_VERSION = 7  # the oldest IR that carries opset 13: readable by every runtime

# Cluster centres of the three classes. They overlap a little, so the
# network has a boundary to learn and a few inputs sit near it.
CENTRES = np.array(
    [
        [2.0, 0.0, 1.0, -1.0],
        [-1.0, 2.0, -1.0, 0.5],
        [0.0, -2.0, 0.0, 2.0],
    ]
)


def normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Approximately standard-normal samples from sums of 12 uniforms
    (Irwin-Hall): only additions, so the same on every machine, unlike
    Gaussian samplers that call log/cos from the platform's libm."""
    return rng.random(shape + (12,)).sum(axis=-1) - 6.0


def blobs(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    xs = []
    ys = []
    for c in range(CLASSES):
        xs.append(CENTRES[c] + normal(rng, (per_class, FEATURES)))
        ys.append(np.full(per_class, c))
    return np.concatenate(xs), np.concatenate(ys)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b without BLAS: a broadcast product summed over the inner axis."""
    return (a[:, :, None] * b[None, :, :]).sum(axis=1)


def exp(x: np.ndarray) -> np.ndarray:
    """exp(x) for x <= 0 as (1 + x/4096)^4096 by 12 squarings: accurate to
    well under 1% in the range that matters after max-subtraction, and
    made of multiplications only (see the module docstring)."""
    y = 1.0 + np.maximum(x, -30.0) / 4096.0
    for _ in range(12):
        y = y * y
    return y


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits, and the hidden activations backprop needs."""
    w1, b1, w2, b2, w3, b3 = params
    h1 = np.maximum(matmul(x, w1) + b1, 0.0)
    h2 = np.maximum(matmul(h1, w2) + b2, 0.0)
    return matmul(h2, w3) + b3, [h1, h2]


def train(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    sizes = [FEATURES, HIDDEN, HIDDEN, CLASSES]
    params: list[np.ndarray] = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        # Uniform He-style initialisation: sqrt(6 / fan_in) bounds.
        bound = float(np.sqrt(6.0 / fan_in))
        params.append((rng.random((fan_in, fan_out)) * 2.0 - 1.0) * bound)
        params.append(np.zeros(fan_out))
    onehot = np.eye(CLASSES)[y]
    n = float(len(x))
    # Adam, full batch.
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, STEPS + 1):
        logits, (h1, h2) = forward(params, x)
        z = exp(logits - logits.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
        d3 = (p - onehot) / n  # d(mean cross-entropy)/d(logits)
        d2 = matmul(d3, params[4].T) * (h2 > 0)
        d1 = matmul(d2, params[2].T) * (h1 > 0)
        grads = [
            matmul(x.T, d1),
            d1.sum(axis=0),
            matmul(h1.T, d2),
            d2.sum(axis=0),
            matmul(h2.T, d3),
            d3.sum(axis=0),
        ]
        for i, g in enumerate(grads):
            m[i] = beta1 * m[i] + (1.0 - beta1) * g
            v[i] = beta2 * v[i] + (1.0 - beta2) * g * g
            mhat = m[i] / (1.0 - beta1**step)
            vhat = v[i] / (1.0 - beta2**step)
            params[i] = params[i] - LEARNING_RATE * mhat / (np.sqrt(vhat) + eps)
    # The file stores float32: every later decision is made on those values.
    return [p.astype(np.float32) for p in params]


def logits32(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of the float32 weights, computed in float64 (exact enough to
    decide classes; the margins above cover float32 runtimes)."""
    return forward([p.astype(np.float64) for p in params], x.astype(np.float64))[0]


def margins(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and its lead over the runner-up, per row."""
    order = np.argsort(-logits, axis=1, kind="stable")
    top = logits[np.arange(len(logits)), order[:, 0]]
    second = logits[np.arange(len(logits)), order[:, 1]]
    return order[:, 0], top - second


INITIALIZERS = ["dense1.weight", "dense1.bias", "dense2.weight", "dense2.bias", "dense3.weight", "dense3.bias"]


def to_onnx(params: list[np.ndarray]) -> bytes:
    inits = [numpy_helper.from_array(p, name) for p, name in zip(params, INITIALIZERS)]
    nodes = [
        helper.make_node("Gemm", ["features", "dense1.weight", "dense1.bias"], ["dense1"], name="dense1"),
        helper.make_node("Relu", ["dense1"], ["relu1"], name="relu1"),
        helper.make_node("Gemm", ["relu1", "dense2.weight", "dense2.bias"], ["dense2"], name="dense2"),
        helper.make_node("Relu", ["dense2"], ["relu2"], name="relu2"),
        helper.make_node("Gemm", ["relu2", "dense3.weight", "dense3.bias"], ["logits"], name="dense3"),
        helper.make_node("Softmax", ["logits"], ["scores"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="guardian examples/inference/model/make_model.py",
        producer_version="1",
        ir_version=IR_VERSION,
        doc_string="Demo 3-class MLP on synthetic 4-D blobs; see examples/inference/README.md",
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def pick_test_inputs(params: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The first TEST_PER_CLASS held-out points of each class that the model
    gets right by a clear margin, with features rounded to 2 decimals (the
    rounded values are the ones checked)."""
    x, y = blobs(rng, 50)
    x = np.round(x, 2).astype(np.float32).astype(np.float64)
    pred, lead = margins(logits32(params, x))
    chosen: list[int] = []
    for c in range(CLASSES):
        ok = [i for i in range(len(x)) if y[i] == c and pred[i] == c and lead[i] >= TEST_MARGIN]
        if len(ok) < TEST_PER_CLASS:
            sys.exit(f"only {len(ok)} clear test inputs for class {c}")
        chosen.extend(ok[:TEST_PER_CLASS])
    return x[chosen], y[chosen]


def find_attack(params: list[np.ndarray], tx: np.ndarray, ty: np.ndarray) -> dict:
    """The smallest tamper that changes exactly one test input's class: one
    flipped bit of one float32 weight, such that every other test input
    keeps its class. Candidates are tried in a fixed order (victim in
    test-input order, then the last layer first, then weight index, then
    bit) and the first that qualifies wins."""
    for victim in range(len(tx)):
        for layer in reversed(range(len(params))):
            flat = params[layer].reshape(-1)
            for index in range(flat.size):
                old_bits = struct.unpack("<I", struct.pack("<f", float(flat[index])))[0]
                for bit in range(32):
                    new_bits = old_bits ^ (1 << bit)
                    new = struct.unpack("<f", struct.pack("<I", new_bits))[0]
                    if not np.isfinite(new) or abs(new) > ATTACK_MAX_ABS:
                        continue
                    trial = [p.copy() for p in params]
                    trial[layer].reshape(-1)[index] = new
                    pred, lead = margins(logits32(trial, tx))
                    changed = pred != ty
                    if not changed[victim] or changed.sum() != 1 or lead.min() < ATTACK_MARGIN:
                        continue
                    return {
                        "victim": victim,
                        "initializer": INITIALIZERS[layer],
                        "index": index,
                        "shape": list(params[layer].shape),
                        "bit": bit,
                        "old_value": float(flat[index]),
                        "new_value": new,
                        "byte_in_value": bit // 8,
                        "old_byte": (old_bits >> (8 * (bit // 8))) & 0xFF,
                        "new_byte": (new_bits >> (8 * (bit // 8))) & 0xFF,
                        "class_before": int(ty[victim]),
                        "class_after": int(pred[victim]),
                    }
    sys.exit("no single-bit attack changes exactly one test input: change SEED")


def locate(data: bytes, raw: bytes, name: str) -> int:
    """Offset of an initializer's raw little-endian data in the file."""
    at = data.find(raw)
    if at < 0 or data.find(raw, at + 1) >= 0:
        sys.exit(f"the bytes of {name} are not found exactly once in {MODEL}")
    return at


def generate(out: Path) -> None:
    rng = np.random.default_rng(SEED)
    x, y = blobs(rng, TRAIN_PER_CLASS)
    params = train(x, y, rng)
    pred, _ = margins(logits32(params, x))
    accuracy = float((pred == y).mean())
    tx, ty = pick_test_inputs(params, rng)
    hx, hy = blobs(rng, HELDOUT_PER_CLASS)
    heldout = float((margins(logits32(params, hx))[0] == hy).mean())
    model = to_onnx(params)
    attack = find_attack(params, tx, ty)

    name = attack["initializer"]
    start = locate(model, params[INITIALIZERS.index(name)].astype("<f4").tobytes(), name)
    offset = start + 4 * attack["index"] + attack["byte_in_value"]
    if model[offset] != attack["old_byte"]:
        sys.exit("internal error: attack offset does not hold the expected byte")
    size = params[INITIALIZERS.index(name)].size * 4
    attack_doc = {
        "model": MODEL,
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "description": (
            f"flip bit {attack['bit'] % 8} of byte {offset}: {name}[{attack['index']}] "
            f"goes from {attack['old_value']!r} to {attack['new_value']!r}; test input "
            f"{attack['victim']} goes from class {attack['class_before']} to class "
            f"{attack['class_after']}, every other test input keeps its class"
        ),
        "initializer": name,
        "initializer_shape": attack["shape"],
        "initializer_offset": start,
        "initializer_bytes": size,
        "element_index": attack["index"],
        "offset": offset,
        "bit": attack["bit"] % 8,
        "original_hex": f"{attack['old_byte']:02x}",
        "replacement_hex": f"{attack['new_byte']:02x}",
        "old_value": attack["old_value"],
        "new_value": attack["new_value"],
        "victim_input": attack["victim"],
        "class_before": attack["class_before"],
        "class_after": attack["class_after"],
        # printf with an octal escape: POSIX, so busybox sh runs it too.
        "command": (
            f"printf '\\{attack['new_byte']:03o}' | "
            f"dd of={MODEL} bs=1 seek={offset} count=1 conv=notrunc"
        ),
    }
    inputs_doc = {
        "model": MODEL,
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "train_accuracy": round(accuracy, 4),
        "heldout_accuracy": round(heldout, 4),
        "inputs": [
            {"id": i, "features": [round(float(v), 2) for v in tx[i]], "class": int(ty[i])}
            for i in range(len(tx))
        ],
    }

    verify(model, tx, ty, attack_doc)

    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL).write_bytes(model)
    (out / f"{MODEL}.sha256").write_text(f"{hashlib.sha256(model).hexdigest()}  {MODEL}\n")
    (out / "test-inputs.json").write_text(to_json(inputs_doc))
    (out / "attack.json").write_text(to_json(attack_doc))
    print(f"{MODEL}: {len(model)} bytes, sha256 {hashlib.sha256(model).hexdigest()}")
    print(f"accuracy {accuracy:.4f} on the training set, {heldout:.4f} on fresh points; {len(tx)} test inputs")
    print(f"attack: {attack_doc['description']}")


def verify(model: bytes, tx: np.ndarray, ty: np.ndarray, attack: dict) -> None:
    """Run the serialized model, and its attacked copy, through onnx's own
    reference runtime: the classes written to the JSON files must be the
    ones an ONNX runtime computes from the bytes written to disk."""
    from onnx.reference import ReferenceEvaluator

    def classes(data: bytes) -> list[int]:
        run = ReferenceEvaluator(onnx.load_from_string(data))
        return [int(np.argmax(run.run(None, {"features": x[None, :].astype(np.float32)})[0])) for x in tx]

    if classes(model) != [int(c) for c in ty]:
        sys.exit("internal error: the ONNX file does not give the expected test classes")
    attacked = bytearray(model)
    attacked[attack["offset"]] = int(attack["replacement_hex"], 16)
    expected = [int(c) for c in ty]
    expected[attack["victim_input"]] = attack["class_after"]
    if classes(bytes(attacked)) != expected:
        sys.exit("internal error: the attacked ONNX file does not give the predicted classes")


def to_json(doc: dict) -> str:
    """One key per line, and each list item on one line: readable in a diff."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"    {json.dumps(v)}" for v in value)
            lines.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


OUTPUTS = [MODEL, f"{MODEL}.sha256", "test-inputs.json", "attack.json"]


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=here, help="output directory (default: next to this script)")
    ap.add_argument("--check", action="store_true", help="regenerate in a temp dir and compare with --out")
    args = ap.parse_args()
    if not args.check:
        generate(args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        differ = [
            f
            for f in OUTPUTS
            if not (args.out / f).is_file() or (Path(tmp) / f).read_bytes() != (args.out / f).read_bytes()
        ]
    if differ:
        print(f"differ from {args.out}: {', '.join(differ)}", file=sys.stderr)
        return 1
    print(f"all of {', '.join(OUTPUTS)} identical to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
