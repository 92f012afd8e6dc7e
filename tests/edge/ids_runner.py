"""A runner for a made-up task, registered the way a real task's runner is.

Task "token_ids_demo": a text -> its token ids and the argmax class id of the model's
`serving_default` signature (called by name). The bundle is the debug classification bundle
with its manifest rewritten (task, no labels), so the runner reads no labels file.
Imported by tests/edge/test_app.py in-process and by the CLI script it runs (edge/ on
sys.path).
"""
from __future__ import annotations

import numpy as np
from runners import Runner, SentencePieceTokenizer, register_runner, short_value

TASK = "token_ids_demo"


class TokenIdsRunner(Runner):
    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--demo-max-ids", type=int, default=0, metavar="N",
                            help="token_ids_demo: report only the first N ids (0: all)")

    def __init__(self, bundle_dir, manifest, num_threads=None, options=None):
        super().__init__(bundle_dir, manifest, num_threads, options)
        self.tokenizer = SentencePieceTokenizer.from_manifest(self.path, manifest)
        self.model = self.signature("serving_default")
        self.max_ids = int(self.options.get("demo_max_ids") or 0)

    def infer(self, text: str) -> dict:
        ids = self.tokenizer(text)
        probabilities = self.model(token_ids=ids[None, :])["probabilities"][0]
        kept = [int(i) for i in ids if i != self.tokenizer.pad_id]
        return {"token_ids": kept[: self.max_ids] if self.max_ids else kept,
                "class_id": int(np.argmax(probabilities))}

    def format(self, result: dict) -> str:
        return f"ids={short_value(result['token_ids'])}\tclass={result['class_id']}\t" \
               f"{result['text']}"


register_runner(TASK, TokenIdsRunner)
