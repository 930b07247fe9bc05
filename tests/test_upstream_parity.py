"""Same model as upstream: our CoOp, CoCoOp and MaPLe against the real upstream classes (manual; skips without them).

``tests/upstream_probe.py`` runs in a subprocess on the import path of a CoOp checkout (``PLPP_COOP_DIR``, for
CoOp and CoCoOp) or a MaPLe checkout (``PLPP_MAPLE_DIR``), with an interpreter that has Dassl, patched so that
its warm-up scheduler runs on current torch (docs/INTEGRATION.md §1). For each configuration below it builds
upstream's model and ours from the same random CLIP tensors and reports: the learnable tensors' names, shapes,
dtypes and initial values (ours must equal upstream's, CTX_INIT × CSC and a multi-token init word included),
the frozen prompt tokens, logits, loss, gradients, one SGD step (optimizer state dtypes included) and the
logits after it; then upstream's checkpoint, written by Dassl's own ``save_model`` (pickled scheduler inside),
loaded by our ``load_model``: the same predictions as upstream's model and as our own checkpoint of that
prompt, on the training classes and on other classes. CoOp and MaPLe agree bit for bit, CoCoOp to fp32
rounding (its text pass is batched over images here, looped upstream); ``prec fp16`` compares upstream's fp16
with ours kept in fp16 on the CPU (where it would fall back to fp32). The commits last checked are listed in
docs/INTEGRATION.md §4.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import PYTHON, REPO, subprocess_env

CHECKOUT = {"CoOp": "PLPP_COOP_DIR", "CoCoOp": "PLPP_COOP_DIR", "MaPLe": "PLPP_MAPLE_DIR"}


def _coop_cases() -> list[dict]:
    cases = []
    for pos in ("end", "middle", "front"):
        for csc in (False, True):
            for n in (4, 3):
                cases.append({"id": f"{pos}-csc{csc}-nctx{n}", "N_CTX": n, "CSC": csc, "CLASS_TOKEN_POSITION": pos,
                              "CTX_INIT": ""})
            for init in ("a photo of a", "a low-res photo of a"):
                cases.append({"id": f"{pos}-csc{csc}-{init.replace(' ', '_')}", "N_CTX": 16, "CSC": csc,
                              "CLASS_TOKEN_POSITION": pos, "CTX_INIT": init})
    cases += [{"id": "fp16-random", "prec": "fp16", "N_CTX": 4, "CSC": False, "CLASS_TOKEN_POSITION": "end",
               "CTX_INIT": ""},
              {"id": "fp16-csc-middle", "prec": "fp16", "N_CTX": 4, "CSC": True, "CLASS_TOKEN_POSITION": "middle",
               "CTX_INIT": ""},
              {"id": "fp16-csc-low-res", "prec": "fp16", "N_CTX": 4, "CSC": True, "CLASS_TOKEN_POSITION": "end",
               "CTX_INIT": "a low-res photo of a"}]
    return cases


def _cocoop_cases() -> list[dict]:
    return [{"id": "nctx4", "N_CTX": 4, "CTX_INIT": ""}, {"id": "nctx3", "N_CTX": 3, "CTX_INIT": ""},
            {"id": "a_photo_of_a", "N_CTX": 16, "CTX_INIT": "a photo of a"},
            {"id": "a_low-res_photo_of_a", "N_CTX": 16, "CTX_INIT": "a low-res photo of a"},
            {"id": "fp16-random", "prec": "fp16", "N_CTX": 4, "CTX_INIT": ""},
            {"id": "fp16-low-res", "prec": "fp16", "N_CTX": 16, "CTX_INIT": "a low-res photo of a"}]


def _maple_cases() -> list[dict]:
    cases = [{"id": f"depth{d}", "N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": d} for d in range(1, 13)]
    cases += [{"id": "nctx3-depth3", "N_CTX": 3, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 3},
              {"id": "random-depth2", "N_CTX": 2, "CTX_INIT": "", "PROMPT_DEPTH": 2},
              {"id": "fp16-depth9", "prec": "fp16", "N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 9},
              {"id": "fp16-depth1", "prec": "fp16", "N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 1}]
    return cases


CASES = {"CoOp": _coop_cases(), "CoCoOp": _cocoop_cases(), "MaPLe": _maple_cases()}
for _cases in CASES.values():
    for _case in _cases:
        _case.setdefault("prec", "fp32")
DIFFS = ("logits", "loss", "grads", "params_after_step", "logits_after_step", "upstream_checkpoint_logits",
         "own_vs_upstream_checkpoint", "new_classes_logits")


def tolerance(host: str, prec: str) -> float:
    """CoOp and MaPLe: bit for bit. CoCoOp: to fp32 (or fp16) rounding, since its text pass is batched here."""
    if host != "CoCoOp":
        return 0.0
    return 1e-4 if prec == "fp32" else 0.1


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """``probe(host)``: the probe's report for every case of ``host`` (one subprocess per host)."""
    reports: dict[str, dict] = {}

    def get(host: str) -> dict:
        if host not in reports:
            from tests.test_checkouts import dassl_warmup_works
            from tests.test_dassl_backend import HAS_DASSL

            checkout = os.environ.get(CHECKOUT[host])
            if not HAS_DASSL or not checkout:
                pytest.skip(f"set {CHECKOUT[host]} to a {'MaPLe' if host == 'MaPLe' else 'CoOp'} checkout and use an "
                            "interpreter with Dassl")
            if not dassl_warmup_works():
                pytest.skip("this Dassl's warm-up scheduler fails on this torch; patch a copy of Dassl as "
                            "docs/INTEGRATION.md §1 says")
            work = tmp_path_factory.mktemp(f"probe-{host.lower()}")
            res = subprocess.run([PYTHON, str(REPO / "tests" / "upstream_probe.py"), host, os.path.expanduser(checkout),
                                  str(work), json.dumps(CASES[host])], cwd=work, env=subprocess_env(),
                                 capture_output=True, text=True, timeout=3000)
            assert res.returncode == 0 and "RESULT " in res.stdout, res.stderr[-3000:]
            reports[host] = json.loads(res.stdout.split("RESULT ", 1)[1])
        return reports[host]

    return get


def _expected_ctx_shape(host: str, case: dict) -> list[int]:
    words = len(case["CTX_INIT"].split(" ")) if case["CTX_INIT"] else case["N_CTX"]
    if host == "MaPLe":
        words = case["N_CTX"]
    width = 512 if host == "MaPLe" else 64
    csc = case.get("CSC") and not case["CTX_INIT"]  # CTX_INIT: one shared context, as upstream CoOp
    return [3, words, width] if csc else [words, width]


@pytest.mark.parametrize("host,case", [(h, c) for h, cases in CASES.items() for c in cases],
                         ids=[f"{h}-{c['id']}" for h, cases in CASES.items() for c in cases])
def test_same_model_as_upstream(probe, host, case):
    report = probe(host)[case["id"]]
    assert "error" not in report, report.get("error")
    assert report["names"] and report["grad_names"]
    assert report["shapes"]["ctx"][0] == _expected_ctx_shape(host, case)
    assert {k: v[0] for k, v in report["shapes"].items()} == {k: v[0] for k, v in report["upstream_shapes"].items()}
    if case["CTX_INIT"]:
        assert report["init_ctx"] == 0.0  # the words' embeddings, upstream's count of them
    assert report["buffers"] <= (0.0 if case["prec"] == "fp32" else 1e-3)  # fp16: upstream keeps them in half
    assert report["param_dtypes"] == report["upstream_param_dtypes"]
    assert report["optimizer_dtypes"] == report["upstream_optimizer_dtypes"]
    assert report["lr"][0] == report["lr"][1]
    assert report["pickled_objects"]  # upstream's checkpoint holds pickled objects; ours skipped them
    tol = tolerance(host, case["prec"])
    for name in DIFFS:
        if name in report:
            assert report[name] <= tol, (name, report[name])
    if not (case.get("CSC") and not case["CTX_INIT"]):
        assert "new_classes_logits" in report


def test_fp16_prompt_tensors_are_upstreams(probe):
    """Under PREC fp16, which learnable tensors are half: CoOp's ctx, CoCoOp's ctx and meta-net, MaPLe's ctx and
    proj (its deep prompts and their maps stay fp32 upstream too)."""
    coop = probe("CoOp")["fp16-random"]["param_dtypes"]
    assert set(coop.values()) == {"torch.float16"}
    cocoop = probe("CoCoOp")["fp16-random"]["param_dtypes"]
    assert set(cocoop.values()) == {"torch.float16"} and any(k.startswith("meta_net.") for k in cocoop)
    maple = probe("MaPLe")["fp16-depth9"]["param_dtypes"]
    half = sorted(k for k, v in maple.items() if v == "torch.float16")
    assert half == ["ctx", "proj.bias", "proj.weight"]
    assert all(maple[k] == "torch.float32" for k in maple if k.startswith(("deep_text_prompts", "deep_projections")))
