import pytest
import yaml

from pipeline.config import ConfigError, config_from_dict, load_config
from pipeline.config_files import diff_configs, parse_override

from .conftest import DATA, QUICKSTART


def _write(tmp_path, doc):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


BASE = {
    "output_dir": "out",
    "model": {"path": "./m"},
    "problems": {"source": "./p.jsonl"},
}


def test_quickstart_loads_and_resolves_paths_against_its_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # any working directory
    cfg = load_config(QUICKSTART)
    assert cfg.model.path == str(DATA / "tiny-model")
    assert cfg.problems.source == str(DATA / "problems" / "math.jsonl")
    assert cfg.output_dir == str(DATA.parent / "runs" / "quickstart")
    assert cfg.generation.rollouts == 4


def test_unknown_top_level_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'shards_size'.*did you mean 'shard_size'"):
        load_config(_write(tmp_path, {**BASE, "shards_size": 3}))


def test_unknown_nested_key_is_named_with_its_section(tmp_path):
    doc = {**BASE, "generation": {"rollout": 8}}
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, doc))
    assert "unknown key 'generation.rollout'" in str(e.value)
    assert "did you mean 'generation.rollouts'" in str(e.value)
    doc = {**BASE, "generation": {"sampling": {"temprature": 0.7}}}
    with pytest.raises(ConfigError, match=r"generation\.sampling\.temprature.*generation\.sampling\.temperature"):
        load_config(_write(tmp_path, doc))


def test_wrong_types_and_missing_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"generation\.rollouts"):
        load_config(_write(tmp_path, {**BASE, "generation": {"rollouts": 0}}))
    with pytest.raises(ConfigError, match=r"missing required key 'model'"):
        load_config(_write(tmp_path, {"output_dir": "o", "problems": {"source": "x"}}))
    with pytest.raises(ConfigError, match=r"model\.engine"):
        load_config(_write(tmp_path, {**BASE, "model": {"path": "m", "engine": "tgi"}}))
    with pytest.raises(ConfigError, match=r"levels must be between 1 and 5"):
        load_config(_write(tmp_path, {**BASE, "problems": {"source": "x", "levels": [0]}}))


def test_not_yaml_or_not_a_mapping(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        QUICKSTART,
        ["generation.rollouts=8", "generation.sampling.temperature=0.7", "problems.levels=[5]", "output_dir=here"],
    )
    assert cfg.generation.rollouts == 8
    assert cfg.generation.sampling.temperature == 0.7
    assert cfg.problems.levels == [5]
    assert cfg.output_dir == str(tmp_path / "here")  # --set paths are relative to the cwd
    with pytest.raises(ConfigError, match=r"unknown key 'generation\.rolouts'"):
        load_config(QUICKSTART, ["generation.rolouts=8"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("generation.rollouts")


def test_hub_ids_are_not_turned_into_paths(tmp_path):
    cfg = load_config(
        _write(
            tmp_path,
            {
                **BASE,
                "model": {"path": "Qwen/Qwen2.5-3B-Instruct"},
                "problems": {"source": "EleutherAI/hendrycks_math"},
            },
        )
    )
    assert cfg.model.path == "Qwen/Qwen2.5-3B-Instruct"
    assert cfg.problems.source == "EleutherAI/hendrycks_math"


def test_explanation_sampling_defaults_to_sampling():
    cfg = config_from_dict({**BASE})
    assert cfg.generation.explanation_params == cfg.generation.sampling


def test_diff_configs_names_changed_keys():
    a = config_from_dict(BASE).model_dump()
    b = config_from_dict({**BASE, "generation": {"rollouts": 3}}).model_dump()
    assert diff_configs(a, b) == ["generation.rollouts"]


def test_scoring_must_cover_every_rejected_side_build_takes():
    from pipeline.config import config_from_dict

    base = {"output_dir": "o", "model": {"path": "m"}, "problems": {"source": "p"}}
    with pytest.raises(ConfigError, match=r"scoring.cot_answers \(1\) is below build.pairs_per_problem \(2\)"):
        config_from_dict({**base, "build": {"pairs_per_problem": 2}}).check_scoring()
    for scoring in ({"cot_answers": 2}, {"cot_answers": "all"}, {"enabled": False}):
        config_from_dict({**base, "build": {"pairs_per_problem": 2}, "scoring": scoring}).check_scoring()


def test_curation_scale_and_benchmark_settings_are_checked_and_resolved(tmp_path):
    base = [f"output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="max_engines applies to a local cluster"):
        load_config(QUICKSTART, [*base, "executor=ray", "ray.address=auto", "ray.max_engines=2"])
    with pytest.raises(ConfigError, match="min_pass_rate"):
        load_config(QUICKSTART, [*base, "build.min_pass_rate=0.8", "build.max_pass_rate=0.5"])
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_config(QUICKSTART, [*base, "generation.explanations_for=1.5"])
    # a benchmark path is resolved like problems.source; a Hub id stays as it is
    cfg = load_config(QUICKSTART, [*base, "problems.decontaminate=[data/problems/gsm8k.jsonl, openai/gsm8k]"])
    sources = [b.source for b in cfg.problems.decontaminate]
    assert sources[0].endswith("data/problems/gsm8k.jsonl") and sources[0].startswith("/")
    assert sources[1] == "openai/gsm8k"
    assert (
        load_config(QUICKSTART, [*base, "generation.explanations_for=unsolved"]).generation.explanations_for
        == "unsolved"
    )
