"""The edge runner of the test task `text_length` (tests/tasks/test_new_task.py):
`python tests/tasks/text_length_runner.py --bundle DIR "text" ...` is the edge app
with this runner registered. Like the app: ai_edge_litert, sentencepiece, numpy."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "edge"))
import app  # noqa: E402  (the edge app, by path)
from runners import Runner, SentencePieceTokenizer, register_runner  # noqa: E402


class TextLengthRunner(Runner):
    def __init__(self, bundle_dir, manifest, num_threads=None, options=None):
        super().__init__(bundle_dir, manifest, num_threads, options)
        self.tokenizer = SentencePieceTokenizer.from_manifest(self.path, manifest)
        self.model = self.signature("serving_default")

    def infer(self, text):
        ids = self.tokenizer(text)[None, :]
        return {"bucket": int(np.argmax(self.model(token_ids=ids)["probabilities"][0]))}

    def format(self, result):
        return f"{result['bucket']}\t{result['text']}"


register_runner("text_length", TextLengthRunner)

if __name__ == "__main__":
    sys.exit(app.main())
