"""SynthPedes: the embedded, procedurally generated text-image person retrieval dataset.

Every identity is a set of attributes (:class:`PersonAttributes`): gender, hair length and colour,
upper garment type and colour, lower garment type and colour, shoe colour, bag type and colour (or
none), hat type and colour (or none) and glasses (or none). About half of the identities of a split
are *variants* of an earlier identity of the same split that differ in one to three attributes, so
identities differ in a few attributes, not all.

Each identity gets 2–4 images (a drawn figure; pose, view, scale, position, background, lighting,
occlusion and horizontal flip vary per image) and every image 2 captions from a grammar with many
sentence forms and synonyms. A caption mentions a *random subset* of the attributes, so it fits
several identities; the generator records what each caption mentions and the dataset card reports
the fraction of test captions whose mentioned attributes fit more than one test identity, and the
*Bayes ceiling* of each split (the expected metrics of an oracle that knows the attributes; see
:mod:`uca_model.ceiling`).

Output (the CUHK-PEDES layout, so training on it exercises the real reader)::

    out_dir/
      reid_raw.json           [{"split", "captions", "file_path", "processed_tokens", "id"}, ...]
      imgs/<split>/<id>_<k>.png
      synth_attributes.json   identity attributes and per-caption mentions (for analysis and tests)
      tokenizer.json          WordPiece tokenizer trained on the training captions
      dataset_card.md / .json counts, sizes, the ambiguity figure, the Bayes ceiling per split
      contact_sheet.png       sample identities with one caption each
      .complete.json          written last; a folder without it is an interrupted run

Generation is deterministic: every random stream is seeded from ``(seed, purpose, id, image)``, so
the same seed gives byte-identical files (PNG carries no timestamp here).
"""

from .build import GENERATOR_VERSION, generate_synthpedes, read_card
from .captions import caption_ambiguity, make_caption
from .presets import PRESETS, SynthPreset
from .render import render_person
from .schema import COLOURS, FIELD_NAMES, SCHEMA, AttributeField, PersonAttributes, mutate_attributes, sample_attributes

__all__ = [
    "GENERATOR_VERSION",
    "COLOURS",
    "AttributeField",
    "SCHEMA",
    "FIELD_NAMES",
    "PersonAttributes",
    "SynthPreset",
    "PRESETS",
    "sample_attributes",
    "mutate_attributes",
    "make_caption",
    "render_person",
    "caption_ambiguity",
    "generate_synthpedes",
    "read_card",
]
