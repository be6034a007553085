"""Invalid jobs are refused with one line naming the file and the field, and `daq-search search` exits 2 before Ray
starts."""

from pathlib import Path

import pytest
import yaml

from daq_search.cli import main
from daq_search.config import load_job
from daq_search.data import VAL_POOL_ALLOWED
from daq_search.errors import DaqSearchError
from daq_search.selection import is_default_rule

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"

BASE = {
    "name": "t",
    "data": {"name": "digits", "train_per_class": 20},
    "teacher": {"model": "tiny_cnn"},
    "student": {"model": "tiny_cnn"},
    "search_space": str(SPACES / "default.yaml"),
}


def write_job(tmp_path, **changes) -> Path:
    job = {**BASE}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_the_base_job_is_valid(tmp_path):
    job = load_job(write_job(tmp_path))
    assert job.student.model == "tiny_cnn" and job.objective == "val_acc" and job.mode == "max"
    assert not job.scheduler.enabled
    assert job.branch is None and job.trial.epochs == 3 and job.final.finalists == 2  # trials of 10 %, finalists


BAD_JOBS = [
    ({"data": {"val_pool": "teacher_unused"}}, r"data\.val_pool: 'teacher_unused' needs teacher\.train_per_class"),
    ({"data": {"val_per_class": 0}}, r"data\.val_per_class: Input should be greater than or equal to 1"),
    ({"trial": {"epoch": 3}}, r"trial\.epoch: unknown key; allowed: epochs, batch_size"),
    ({"quant": {"wbits": 1}}, r"quant\.wbits: Input should be greater than or equal to 2"),
    ({"quant": {"abits": 9}}, r"quant\.abits: Input should be less than or equal to 8"),
    ({"teacher": {"model": "resnet99"}}, r"teacher\.model: unknown model 'resnet99'; allowed: .*resnet8"),
    ({"searcher": {"points_to_evaluate": ["fancyaug"]}}, r"searcher\.points_to_evaluate\.0: candidate 'fancyaug'"),
    ({"search_space": "nope.yaml"}, r"search_space: no such file .*nope\.yaml"),
    ({"student": {"model": "resnet8", "init": "teacher"}}, r"student\.init: 'teacher' needs the student to be"),
    ({"objective": "accuracy"}, r"objective: unknown metric 'accuracy'; allowed: score"),
    (
        {"teacher": {"model": "tiny_cnn", "train_per_class": 10}},
        r"teacher\.train_per_class: 10 must be at least data\.train_per_class \(20",
    ),
    (
        {"data": {"train_per_class": None}, "teacher": {"model": "tiny_cnn", "train_per_class": 30}},
        r"teacher\.train_per_class: 30 must be at least data\.train_per_class \(None: all images when unset\)",
    ),
]


@pytest.mark.parametrize("changes, message", BAD_JOBS, ids=[m.split(":")[0] for _, m in BAD_JOBS])
def test_bad_job_is_one_line_naming_file_and_field(tmp_path, changes, message):
    path = write_job(tmp_path, **changes)
    with pytest.raises(DaqSearchError, match=message) as err:
        load_job(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_teacher_split_is_the_data_with_the_teachers_images_per_class(tmp_path):
    job = load_job(write_job(tmp_path, teacher={"model": "tiny_cnn", "train_per_class": 60}))
    assert job.teacher_data() == job.data.model_copy(update={"train_per_class": 60})
    assert job.teacher_data().train_per_class == 60 and job.data.train_per_class == 20
    plain = load_job(write_job(tmp_path))
    assert plain.teacher_data() is plain.data


def test_a_val_pool_folder_is_resolved_against_the_job_file(tmp_path):
    (tmp_path / "deployed" / "0").mkdir(parents=True)
    job = load_job(write_job(tmp_path, data={"val_pool": "deployed"}))
    assert job.data.val_pool == str(tmp_path / "deployed")
    assert load_job(write_job(tmp_path, data={"val_pool": "split"})).data.val_pool == "split"


def test_a_missing_val_pool_folder_is_one_line_before_ray_starts(tmp_path, capsys):
    line = cli_error(capsys, ["search", str(write_job(tmp_path, data={"val_pool": "all"})), "--storage", str(tmp_path)])
    assert line.endswith(f"data.val_pool: '{tmp_path / 'all'}' is not a folder; {VAL_POOL_ALLOWED}")


def test_not_yaml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(DaqSearchError, match=r"broken\.yaml: line 2, column 1: malformed YAML: "):
        load_job(broken)
    with pytest.raises(DaqSearchError, match=r"absent\.yaml: no such file; allowed: a job YAML file$"):
        load_job(tmp_path / "absent.yaml")


def cli_error(capsys, argv) -> str:
    import ray

    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daq-search: error: "), captured.err
    assert not ray.is_initialized()
    return lines[0]


@pytest.mark.parametrize("changes, message", BAD_JOBS[:4], ids=[m.split(":")[0] for _, m in BAD_JOBS[:4]])
def test_search_cli_exits_2_before_ray_starts(tmp_path, capsys, changes, message):
    line = cli_error(capsys, ["search", str(write_job(tmp_path, **changes)), "--storage", str(tmp_path / "runs")])
    assert str(tmp_path / "job.yaml") in line
    assert not (tmp_path / "runs").exists()


def test_search_cli_checks_data_storage_and_name_before_ray(tmp_path, capsys):
    missing = write_job(tmp_path, data={"name": "cifar10", "root": str(tmp_path / "no-cifar"), "train_per_class": None})
    assert "data.root:" in cli_error(capsys, ["search", str(missing)])
    job = str(write_job(tmp_path))
    assert "storage: 's3://bucket/runs' is a URI" in cli_error(capsys, ["search", job, "--storage", "s3://bucket/runs"])
    assert "--name: 'a b' is not allowed" in cli_error(capsys, ["search", job, "--name", "a b"])
    assert "absent.yaml: no such file; allowed: a job YAML file" in cli_error(
        capsys, ["search", str(tmp_path / "absent.yaml")]
    )
    assert "the following arguments are required: job" in cli_error(capsys, ["search"])


JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.mark.parametrize("name", ["demo", "cifar10_resnet20_w2a2", "cifar100_vgg13_w2a2", "tinyimagenet_resnet18_w3a3"])
def test_shipped_jobs_are_valid(name):
    job = load_job(JOBS / f"{name}.yaml")
    assert job.name == name and job.candidate is None
    assert is_default_rule(job)  # every shipped job selects with the benchmark's default rule
    if name == "demo":
        assert (
            (job.data.name, job.data.image_size) == ("scenes", 32)
            and job.max_concurrent_trials == 2
            and job.resources.cpus_per_trial == 1
        )
        assert job.final.workers == 2 and job.teacher.train_per_class == 60 * job.data.train_per_class
    else:
        assert job.storage.startswith("/mnt/shared/") and job.resources.gpus_per_trial > 0 and job.final.use_gpu
        assert len(job.searcher.points_to_evaluate) == 16 and job.quant.first_last_bits is None
        assert job.data.download == name.startswith("cifar")  # torchvision's data sets fetch themselves


def test_cluster_config_mounts_the_shared_storage_of_the_cluster_jobs():
    cluster = yaml.safe_load((JOBS / "cluster.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(cluster)
    assert cluster["head_node_type"] in cluster["available_node_types"]
    setup = " ".join(cluster["setup_commands"])
    assert "mount -t nfs4" in setup and "/mnt/shared" in setup and "ray[default,tune]==2.60.0" in setup
