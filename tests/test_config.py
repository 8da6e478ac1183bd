"""The YAML/dataclass config system (sj_jax.core.config) and the mesh built from a MeshConfig."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import jax
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sj_jax.core.config import (
    apply_overrides,
    check_owned,
    field_at,
    from_dict,
    load_yaml,
    save_yaml,
    to_dict,
    with_fields,
)
from sj_jax.core.errors import ConfigError
from sj_jax.models.config import ModelConfig, RopeConfig
from sj_jax.models.sharding import MeshConfig, make_mesh


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float
    steps: int = 10
    schedule: Literal["constant", "cosine"] = "constant"


@dataclasses.dataclass(frozen=True)
class Run:
    optim: Optim
    mesh: MeshConfig = MeshConfig()
    name: str = "run"
    resume: bool = False
    seeds: tuple[int, ...] = ()
    max_len: int | None = None


GOOD = {"optim": {"lr": 0.25, "steps": 7, "schedule": "cosine"}, "mesh": {"data": -1, "fsdp": 2},
        "name": "x", "resume": True, "seeds": [3, 1, 4], "max_len": 96}


def test_good_mapping_builds_nested_dataclasses():
    run = from_dict(Run, GOOD)
    assert run == Run(Optim(0.25, 7, "cosine"), MeshConfig(data=-1, fsdp=2), "x", True, (3, 1, 4), 96)
    assert isinstance(run.mesh, MeshConfig) and isinstance(run.seeds, tuple)
    assert from_dict(Run, {"optim": {"lr": 1}}).optim.lr == 1.0  # an int is a fine float


@pytest.mark.parametrize("data, message", [
    ({"optim": {"lr": 0.1}, "mesh": {"tensr": 2}}, "mesh.tensr: unknown key; known: data, fsdp, tensor"),
    ({"optim": {"lr": 0.1, "stpes": 3}}, "optim.stpes: unknown key; known: lr, steps, schedule"),
    ({"optim": {"lr": 0.1}, "nmae": "y"}, "nmae: unknown key; known: optim, mesh, name, resume, seeds, max_len"),
])
def test_unknown_key_named_with_dotted_path(data, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        from_dict(Run, data)


@pytest.mark.parametrize("data, message", [
    ({}, "optim: required key is missing"),
    ({"optim": {"steps": 3}}, "optim.lr: required key is missing"),
])
def test_missing_required_key(data, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        from_dict(Run, data)


@pytest.mark.parametrize("patch, message", [
    ({"optim": {"lr": 0.1, "steps": "7"}}, "optim.steps: expected an integer, got '7'"),
    ({"optim": {"lr": 0.1, "steps": True}}, "optim.steps: expected an integer, got True"),
    ({"optim": {"lr": 0.1, "steps": 2.5}}, "optim.steps: expected an integer, got 2.5"),
    ({"optim": {"lr": "fast"}}, "optim.lr: expected a number, got 'fast'"),
    ({"optim": {"lr": False}}, "optim.lr: expected a number, got False"),
    ({"resume": 1}, "resume: expected true or false, got 1"),
    ({"name": 5}, "name: expected a string, got 5"),
    ({"mesh": {"data": "2"}}, "mesh.data: expected an integer, got '2'"),
    ({"mesh": 4}, "mesh: expected a mapping for MeshConfig, got 4"),
    ({"seeds": 3}, "seeds: expected a list, got 3"),
    ({"seeds": [1, "two", 3]}, "seeds[1]: expected an integer, got 'two'"),
    ({"max_len": "long"}, "max_len: expected an integer, got 'long'"),
])
def test_wrong_type_names_field_and_value(patch, message):
    data = {**GOOD, **patch}
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        from_dict(Run, data)


def test_optional_accepts_none():
    assert from_dict(Run, {**GOOD, "max_len": None}).max_len is None


def test_literal_values():
    assert from_dict(RopeConfig, {"kind": "llama3"}).kind == "llama3"
    with pytest.raises(ConfigError, match=re.escape("kind: 'yarn' is not one of ['default', 'linear', 'llama3']")):
        from_dict(RopeConfig, {"kind": "yarn"})
    with pytest.raises(ConfigError, match=re.escape("optim.schedule: 'Cosine' is not one of ['constant', 'cosine']")):
        from_dict(Run, {"optim": {"lr": 0.1, "schedule": "Cosine"}})


TINY = {"model_type": "llama", "vocab_size": 97, "hidden_size": 48, "intermediate_size": 80, "num_layers": 2,
        "num_heads": 6, "num_kv_heads": 2, "head_dim": 8}


def test_model_config_nested_rope_and_post_init_errors():
    cfg = from_dict(ModelConfig, {**TINY, "rope": {"theta": 5e5, "kind": "linear", "factor": 2.0}})
    assert cfg.rope == RopeConfig(theta=5e5, kind="linear", factor=2.0)
    assert cfg.sliding_windows == (0, 0)
    with pytest.raises(ConfigError, match=re.escape("rope.kind: 'ntk' is not one of")):
        from_dict(ModelConfig, {**TINY, "rope": {"kind": "ntk"}})
    with pytest.raises(ConfigError, match=re.escape("model_type: 'gpt2' is not supported")):
        from_dict(ModelConfig, {**TINY, "model_type": "gpt2"})
    with pytest.raises(ConfigError, match=re.escape("num_key_value_heads: 4 does not divide num_attention_heads 6")):
        from_dict(ModelConfig, {**TINY, "num_kv_heads": 4})
    with pytest.raises(ConfigError, match=re.escape("sliding_windows: 3 entries for 2 layers")):
        from_dict(ModelConfig, {**TINY, "sliding_windows": [0, 4, 4]})


# --------------------------------------------------------------------------- overrides and YAML files


def test_overrides_nested_and_yaml_typed():
    data = apply_overrides({"optim": {"lr": 0.5}}, [
        "optim.steps=3", "optim.lr=0.001", "mesh.fsdp=2", "resume=true", "seeds=[5, 8]", "max_len=null",
        "name='42'", "optim.schedule=cosine",
    ])
    assert data == {"optim": {"lr": 0.001, "steps": 3, "schedule": "cosine"}, "mesh": {"fsdp": 2},
                    "resume": True, "seeds": [5, 8], "max_len": None, "name": "42"}
    run = from_dict(Run, data)
    assert run.optim == Optim(0.001, 3, "cosine") and run.mesh == MeshConfig(fsdp=2) and run.name == "42"


def test_override_value_may_contain_equals():
    assert apply_overrides({}, ["name=a=b"]) == {"name": "a=b"}


@pytest.mark.parametrize("override, message", [
    ("optim.lr", "override 'optim.lr': expected key=value"),
    ("name.first=3", "override 'name.first=3': name is not a section"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        apply_overrides({"name": "x"}, [override])


def test_load_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.5\n  steps: 4\nmesh:\n  data: 1\nseeds: [2, 7]\n")
    run = load_yaml(Run, path, ["optim.steps=9", "mesh.tensor=1", "name=tuned"])
    assert run == Run(Optim(0.5, 9), MeshConfig(data=1), "tuned", False, (2, 7))
    assert load_yaml(Run, None, ["optim.lr=0.125"]).optim.lr == 0.125


def test_load_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: [0.1, 0.2\n  steps: 3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid YAML"):
        load_yaml(Run, path)
    path.write_text("- optim\n- mesh\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: the top level must be a mapping$"):
        load_yaml(Run, path)
    path.write_text("optim:\n  lr: 0.1\nmesh:\n  tensr: 2\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: mesh\.tensr: unknown key"):
        load_yaml(Run, path)
    path.write_text("optim: {lr: 1.5}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: optim\.steps: expected an integer, got 'x'$"):
        load_yaml(Run, path, ["optim.steps=x"])  # a bad override is reported against the file it amends
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(missing))}: config file not found$"):
        load_yaml(Run, missing)


def test_save_yaml_round_trip(tmp_path):
    run = from_dict(Run, GOOD)
    save_yaml(run, tmp_path / "out.yaml")
    assert load_yaml(Run, tmp_path / "out.yaml") == run
    cfg = from_dict(ModelConfig, {**TINY, "rope": {"kind": "llama3", "factor": 8.0}, "sliding_windows": [0, 16],
                                  "eos_token_id": 2, "dtype": "bfloat16"})
    save_yaml(cfg, tmp_path / "model.yaml")
    assert load_yaml(ModelConfig, tmp_path / "model.yaml") == cfg


# --------------------------------------------------------------------------- properties

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
sizes = st.one_of(st.just(-1), st.integers(min_value=1, max_value=1 << 20))
meshes = st.builds(MeshConfig, data=sizes, fsdp=sizes, tensor=sizes)
ropes = st.builds(RopeConfig, theta=finite, kind=st.sampled_from(["default", "linear", "llama3"]), factor=finite,
                  low_freq_factor=finite, high_freq_factor=finite,
                  original_max_position_embeddings=st.integers(min_value=1, max_value=1 << 24))


@settings(max_examples=60, deadline=None)
@given(x=st.one_of(meshes, ropes))
def test_round_trip_property(x):
    d = to_dict(x)
    assert from_dict(type(x), d) == x
    assert from_dict(type(x), yaml.safe_load(yaml.safe_dump(d))) == x  # through YAML text too


@settings(max_examples=40, deadline=None)
@given(rope=ropes, windows=st.lists(st.integers(min_value=0, max_value=4096), min_size=2, max_size=2),
       eos=st.one_of(st.none(), st.integers(min_value=0, max_value=96)))
def test_model_config_round_trip_property(rope, windows, eos):
    cfg = ModelConfig(**TINY, rope=rope, sliding_windows=tuple(windows), eos_token_id=eos)
    assert from_dict(ModelConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg


# --------------------------------------------------------------------------- make_mesh


ONE = jax.devices()[:1]


def test_make_mesh_on_one_device():
    mesh = make_mesh(MeshConfig(), ONE)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert dict(make_mesh(MeshConfig(data=1, fsdp=-1), ONE).shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("cfg, message", [
    (MeshConfig(data=-1, fsdp=-1), "mesh: at most one axis may be -1"),
    (MeshConfig(data=-1, fsdp=1, tensor=-1), "mesh: at most one axis may be -1"),
    (MeshConfig(data=2, fsdp=1, tensor=1), "mesh: data*fsdp*tensor = 2 but there are 1 devices"),
    (MeshConfig(data=1, fsdp=3, tensor=2), "mesh: data*fsdp*tensor = 6 but there are 1 devices"),
    (MeshConfig(data=-1, tensor=2), "mesh: 1 devices are not divisible by 2"),
    (MeshConfig(fsdp=0), "mesh.fsdp: must be a positive size or -1, got 0"),
    (MeshConfig(tensor=-3), "mesh.tensor: must be a positive size or -1, got -3"),
])
def test_make_mesh_errors(cfg, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make_mesh(cfg, ONE)


@pytest.mark.parametrize("text, value", [("1e-5", 1e-5), ("2E3", 2000.0), ("-3.5e-2", -0.035)])
def test_exponent_floats_without_a_dot_are_numbers(tmp_path, text, value):
    """PyYAML reads `1e-5` as a string; a float field still takes it, from a file or an override."""
    path = tmp_path / "run.yaml"
    path.write_text(f"optim:\n  lr: {text}\n")
    assert load_yaml(Run, path).optim.lr == value
    assert load_yaml(Run, None, [f"optim.lr={text}"]).optim.lr == value
    with pytest.raises(ConfigError, match=r"optim.lr: expected a number, got 'fast'"):
        load_yaml(Run, None, ["optim.lr=fast"])


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str = "stage"
    optim: Optim = Optim(lr=0.5, steps=3, schedule="cosine")  # a default instance, not the class's defaults


@dataclasses.dataclass(frozen=True)
class Pipeline:
    stage: Stage = Stage(name="first")
    other: Stage = Stage()


def test_a_section_given_in_part_keeps_the_rest_of_its_default_instance():
    got = load_yaml(Pipeline, None, ["stage.optim.steps=7"])
    assert got.stage == Stage(name="first", optim=Optim(lr=0.5, steps=7, schedule="cosine"))
    assert got.other == Stage()
    # a section given whole is read as given; a missing required key is still named
    assert from_dict(Pipeline, {"stage": {"optim": {"lr": 1.0}}}).stage.optim == Optim(lr=1.0, steps=3,
                                                                                          schedule="cosine")
    with pytest.raises(ConfigError, match=r"stage.optim.schedule: 'linear' is not one of"):
        load_yaml(Pipeline, None, ["stage.optim.schedule=linear"])
    with pytest.raises(ConfigError, match=r"^run.optim: required key is missing"):
        from_dict(Run, {}, "run")


def test_with_fields_replaces_dotted_keys_and_check_owned_names_the_key():
    p = Pipeline()
    q = with_fields(p, {"stage.optim.lr": 2.0, "stage.name": "x", "other": Stage(name="y")})
    assert q == Pipeline(stage=Stage(name="x", optim=Optim(lr=2.0, steps=3, schedule="cosine")), other=Stage(name="y"))
    assert field_at(q, "stage.optim.lr") == 2.0 and p == Pipeline()  # the original is untouched
    check_owned(p.stage, "stage", Pipeline().stage, ("name", "optim.lr"), "the pipeline")
    with pytest.raises(ConfigError, match=r"^stage.optim.lr: set by the pipeline"):
        check_owned(q.stage, "stage", Pipeline().stage, ("name", "optim.lr")[1:], "the pipeline")
