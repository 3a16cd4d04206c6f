"""The README's API list is the running app's API: every endpoint, its parameters and its outputs, in
order, as ``gradio_client``'s ``view_api`` reports them, and each endpoint's example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = re.compile(r"^### `(/\w+)`.*?\n(.*?)(?=^### |^## |\Z)", re.M | re.S)


def documented() -> dict[str, dict]:
    """Each endpoint the README's API section lists: its parameters, outputs and example code."""
    api = README.read_text(encoding="utf-8").split("\n## API", 1)[1].split("\n## ", 1)[0]
    found = {}
    for name, body in SECTION.findall(api):
        params = re.search(r"^Parameters: (.*)$", body, re.M)
        outputs = re.search(r"^Outputs: (.*)$", body, re.M)
        example = re.search(r"```python\n(.*?)```", body, re.S)
        assert params and outputs and example, f"{name}: needs 'Parameters:', 'Outputs:' and a python example"
        found[name] = {"parameters": re.findall(r"`([^`]+)`", params[1]),
                       "outputs": re.findall(r"`([^`]+)`", outputs[1]), "example": example[1]}
    return found


@pytest.fixture(scope="module")
def api(served) -> dict:
    return gradio_client.Client(served.url, verbose=False).view_api(print_info=False, return_format="dict")


def test_the_readme_lists_every_endpoint_with_its_parameters_and_outputs(api):
    docs, live = documented(), api["named_endpoints"]
    assert set(docs) == set(live), "README's API section and the app's endpoints differ"
    for name, endpoint in live.items():
        assert docs[name]["parameters"] == [p["parameter_name"] for p in endpoint["parameters"]], name
        assert docs[name]["outputs"] == [r["label"] for r in endpoint["returns"]], name
    assert not api["unnamed_endpoints"]


def test_every_parameter_and_output_has_a_name_that_explains_itself(api):
    for name, endpoint in api["named_endpoints"].items():
        names = [p["parameter_name"] for p in endpoint["parameters"]] + [r["label"] for r in endpoint["returns"]]
        assert not [n for n in names if re.fullmatch(r"(value|param|parameter)_\d+|\w{1,2}", n)], name


def test_each_example_runs(served):
    for name, doc in documented().items():
        example = doc["example"].replace('"http://127.0.0.1:7860/"', repr(served.url))
        if name == "/load_model":  # the example loads the hub's gpt2: offer the tiny model instead
            example = example.replace('"gpt2"', repr(served.key))
        namespace: dict = {}
        exec(example, namespace)  # noqa: S102 - the README's own example, against the local test app
