"""The examples learn what they claim, at a reduced size (examples/*.py)."""

import importlib.util
import pathlib


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sine_regression_reaches_one_percent_of_the_variance():
    assert load("sine_regression").main(n_steps=3000, verbose=0) < 0.01


def test_digit_pattern_classifier_above_95_percent():
    assert load("digit_patterns").main(n=3000, epochs=10, verbose=0) > 0.95


def test_char_lm_falls_well_below_unigram_entropy(capsys):
    module = load("char_lm")
    loss, unigram = module.main(epochs=10, verbose=1)  # verbose also samples text
    assert loss < 0.5 * unigram
    out = capsys.readouterr().out
    after = out.split("unigram entropy", 1)[1].split("\n", 1)[1]
    assert after.startswith("The ") and len(after) > 150  # the sampled continuation
