"""``uca search`` says how many gallery identities fit everything the query says (none, some), from
a reader of free text that inverts the SynthPedes caption grammar."""

from __future__ import annotations

import json

import numpy as np
import pytest

from uca_model import cli
from uca_model.synth.captions import make_caption
from uca_model.synth.parse import mentions_of_text
from uca_model.synth.schema import sample_attributes


def test_every_generated_caption_reads_back_to_its_mentions():
    rng = np.random.default_rng(1)
    for _ in range(3000):
        text, mentions = make_caption(sample_attributes(rng), rng)
        assert mentions_of_text(text) == mentions, text


@pytest.mark.parametrize("text, want", [
    ("a woman in a red coat with a black backpack",
     {"gender": "female", "upper_type": "coat", "upper_colour": "red", "bag_type": "backpack", "bag_colour": "black"}),
    ("A man wearing gray jeans and a t-shirt in violet, no glasses. His hair is long ginger.",
     {"gender": "male", "lower_type": "jeans", "lower_colour": "grey", "upper_type": "t-shirt",
      "upper_colour": "purple", "glasses": "none", "hair_length": "long", "hair_colour": "red"}),
    ("someone walking fast", {}),
])
def test_free_text(text, want):
    assert mentions_of_text(text) == want


def _fits(identity: dict, mentions: dict) -> bool:
    return all(identity[k] == v for k, v in mentions.items())


@pytest.mark.usefixtures("one_thread")
def test_search_says_when_no_gallery_identity_fits(trained, tmp_path, capsys):
    attrs = json.loads((trained["data"] / "synth_attributes.json").read_text())
    from uca_model.data import load_dataset

    _, gallery = load_dataset(trained["data"], "synthpedes").eval_split("test")
    ids = {int(d["id"]): d["attributes"] for d in attrs["identities"]}
    pids = sorted({g.pid for g in gallery})
    impossible = "a man with long red hair in a pink hoodie, orange shorts, red shoes, a purple beanie and sunglasses"
    wanted = mentions_of_text(impossible)
    assert len(wanted) == 11 and not any(_fits(ids[p], wanted) for p in pids)  # the premise
    argv = ["--run", str(trained["run"]), "--topk", "2", "--out", str(tmp_path / "g.png")]
    assert cli.main(["search", impossible, *argv]) == 0
    out = capsys.readouterr().out
    assert "no identity of the test gallery fits everything the query says (gender male, hair length long" in out
    # a query built from one gallery identity's upper garment: that many identities fit, as counted here
    a = ids[pids[0]]
    query = f"a person in a {a['upper_colour']} {a['upper_type']}"
    n = sum(_fits(ids[p], {"upper_type": a["upper_type"], "upper_colour": a["upper_colour"]}) for p in pids)
    assert cli.main(["search", query, *argv]) == 0
    assert (f"{n} of the {len(pids)} test gallery identities fit everything the query says "
            f"(upper type {a['upper_type']}, upper colour {a['upper_colour']})") in capsys.readouterr().out
