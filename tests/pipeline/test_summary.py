"""The end-of-run summary says plainly whether the Transformer beats the baseline."""

from pipeline.tasks.text_classification import verdict


def test_verdict_names_every_metric_the_model_loses_on():
    base = {"accuracy": 0.8553, "macro_f1": 0.7409}
    assert verdict({"accuracy": 0.8656, "macro_f1": 0.7440}, base).startswith(
        "  => the Transformer beats the baseline (accuracy +1.03 points, macro-F1 +0.31")
    line = verdict({"accuracy": 0.8407, "macro_f1": 0.7258}, base)
    assert "does NOT beat the baseline on accuracy and macro-F1" in line
    assert "accuracy -1.46 points" in line
    assert "NOT beat the baseline on macro-F1 (" in verdict(
        {"accuracy": 0.86, "macro_f1": 0.74}, base)
    assert "NOT" in verdict(base, base)   # a tie is not a win
