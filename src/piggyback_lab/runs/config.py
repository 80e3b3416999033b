"""The root config: where it lives, how it is composed outside a Hydra app, and how a
stored dataset name maps back to its config."""

from __future__ import annotations

import contextlib
import difflib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from piggyback_lab.methods import check_schema_keys  # importing it registers the schemas
from piggyback_lab.methods.ranges import check_schema_values
from piggyback_lab.utils.checkout import CONF_DIR
from piggyback_lab.utils.errors import UserError, exit_on_user_error

DATASET_CONF = CONF_DIR / "dataset"


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, as a Hydra app would compose it
    (without the ``hydra`` node); a bad override is a UserError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its search path
            cfg = hydra_compose(config_name, overrides=list(overrides))
        else:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = hydra_compose(config_name, overrides=list(overrides))
    except HydraException as err:  # a typed config's reason is the cause: 'abc' is no Float
        cause = f" ({one_line(err.__cause__)})" if err.__cause__ else ""
        raise UserError(f"bad config override: {one_line(err)}{cause}") from None
    check_schema_keys(cfg)  # +method.treshold=1e-3: Hydra adds a key even to a typed node
    check_schema_values(cfg)  # method.affine_lr=-1 would train by gradient ascent
    return cfg


HYDRA_DETAIL = ("full_key:", "object_type", "reference_type", "Set the environment variable")


def one_line(err: Exception) -> str:
    """Hydra's multi-line message as one line, without its debugging details."""
    lines = [line.strip() for line in str(err).split("Config search path")[0].splitlines()]
    kept = [line for line in lines if line and not line.startswith(HYDRA_DETAIL)]
    return " ".join(kept)


@exit_on_user_error
def check_command_line(config_name: str, argv: Sequence[str] | None = None) -> None:
    """Compose the command line's overrides once before Hydra runs the app, so a bad one is
    one ``error:`` line and exit 2 (Hydra itself prints several lines and exits 1). Sweep
    values are checked one by one; Hydra's own flags and ``hydra.*`` keys are left to it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = list(sys.argv[1:] if argv is None else argv)
    if {"-m", "--multirun"} & set(args) and {"-c", "--cfg"} & set(args):
        raise UserError(
            "-m (run a sweep) and --cfg (print one job's config) do not go together; to check "
            "a sweep's preset, drop -m and give each swept key one value (--cfg job --resolve)"
        )
    if any(a in ("-h", "--help", "--hydra-help", "--info", "-i") for a in args):
        return
    check_hydra_keys([a for a in args if a.startswith(HYDRA_CHECKED)])
    plain = [a for a in args if "=" in a and not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except HydraException as err:
        raise UserError(f"bad command line: {one_line(err)}") from None
    check_key_names(parsed, config_name)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    for override in (o for o in parsed if o.is_sweep_override()):
        key = override.get_key_element()
        for value in override.sweep_string_iterator():
            compose([*fixed, f"{key}={value}"], config_name)
    check_log_dir(compose(fixed, config_name))


def check_log_dir(cfg: DictConfig) -> None:
    """Hydra writes its job folder under ``paths.log_dir`` before the app runs: a folder that
    cannot be written is one error line here, not Hydra's traceback."""
    check_paths(cfg)
    check_writable_folder(cfg, "log_dir")


HYDRA_LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm")  # installed ones
# The hydra.* arguments checked here; Hydra takes the rest as they are.
HYDRA_CHECKED = ("hydra/launcher=", "hydra.launcher.", "hydra.run.dir=", "hydra.sweep.dir=")


def check_hydra_keys(args: Sequence[str]) -> None:
    """The launcher, its job count and the job folders, which Hydra would refuse in a
    traceback."""
    ours = sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml"))
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "hydra/launcher" and value not in (*ours, *HYDRA_LAUNCHERS):
            raise UserError(
                f"unknown launcher hydra/launcher={value}; choose one of: "
                f"{', '.join([*ours, *HYDRA_LAUNCHERS])}"
            )
        if key == "hydra.launcher.n_jobs" and not value.lstrip("-").isdigit():
            raise UserError(f"hydra.launcher.n_jobs must be an integer (got {value!r})")
        if key == "hydra.launcher.n_jobs" and int(value) == 0:
            raise UserError(
                "hydra.launcher.n_jobs=0 runs no job; pass the number of jobs at once "
                "(>= 1), or -1 for one per CPU"
            )
        if key in ("hydra.run.dir", "hydra.sweep.dir"):
            check_job_folder(key, value)


def check_job_folder(key: str, value: str) -> None:
    """Hydra makes its job folder before the app runs: one that cannot be written is one
    error line here. An interpolated part (``${now:...}``) is left out: the folder above
    it is checked."""
    fixed = value.strip().strip("'\"").split("${")[0]
    if not fixed.strip():
        return  # all of it interpolated: paths.log_dir's check covers the default
    folder = Path(fixed) if fixed.endswith("/") or "${" not in value else Path(fixed).parent
    try:
        try_writing(folder)
    except OSError as err:
        raise UserError(
            f"{key}: cannot write to {folder} ({err.strerror or err}); pass "
            f"{key}=<a writable folder>"
        ) from None


def check_key_names(overrides: Sequence[Any], config_name: str) -> None:
    """A key that is not in the config but close to one is a typo: ``+datset=cub`` would
    add an unused key and train the default dataset. Name the key it resembles."""
    # the app's keys, the training config's (eval and predict include it), and the groups
    known = {
        *OmegaConf.load(CONF_DIR / f"{config_name}.yaml"),
        *OmegaConf.load(CONF_DIR / "config.yaml"),
    }
    known = (known | {p.name for p in CONF_DIR.iterdir() if p.is_dir()}) - {"defaults"}
    for override in overrides:
        key = override.get_key_element().lstrip("+~")
        top = key.split(".")[0].split("/")[0].split("@")[0]
        if top in known:
            continue
        close = difflib.get_close_matches(top, sorted(known), n=1, cutoff=0.75)
        if close:
            fixed = override.input_line.lstrip("+~").replace(top, close[0], 1)
            raise UserError(
                f"unknown key {top!r} in {override.input_line!r}; did you mean {fixed}?"
            )


def with_dataset(cfg: DictConfig, dataset: str) -> DictConfig:
    """A copy of the run config with ``dataset`` composed from conf/dataset/<dataset>.yaml
    (a PackNet sequence runs one such config per task). What the run changed on its own
    dataset applies to it too: the command line's ``dataset.*`` overrides and an experiment
    preset's ``dataset:`` settings (e.g. ``transforms.flip: true`` for every task)."""
    task_cfg = cfg.copy()
    with open_dict(task_cfg):
        task_cfg.dataset = compose([f"dataset={dataset}", *dataset_overrides()]).dataset
        task_cfg.dataset.merge_with(dataset_changes(cfg))
    return task_cfg


def dataset_changes(cfg: DictConfig) -> dict[str, Any]:
    """The settings in which the run's dataset differs from its config composed with the
    command line's overrides (what an experiment preset set), as a nested dict."""
    config = dataset_config_for(str(cfg.dataset.get("name")))
    if config is None:
        return {}
    plain = compose([f"dataset={config}", *dataset_overrides()]).dataset
    return _changed(
        OmegaConf.to_container(cfg.dataset, resolve=False),
        OmegaConf.to_container(plain, resolve=False),
    )


def _changed(ran: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in ran.items():
        if isinstance(value, dict) and isinstance(plain.get(key), dict):
            if inner := _changed(value, plain[key]):
                out[key] = inner
        elif key not in plain or plain[key] != value:
            out[key] = value
    return out


def dataset_overrides() -> list[str]:
    """The running app's ``dataset.*`` overrides (none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").startswith("dataset.")]


def dataset_config_names() -> list[str]:
    """Every dataset config as ``dataset=`` names it (cub, decathlon/aircraft, ...)."""
    return sorted(
        p.relative_to(DATASET_CONF).with_suffix("").as_posix() for p in DATASET_CONF.rglob("*.yaml")
    )


def dataset_config_for(dataset: str) -> str | None:
    """The config of a dataset stored by its config name or by its ``name`` field
    (task files and records store ``decathlon_dtd`` for ``dataset=decathlon/dtd``)."""
    names = dataset_config_names()
    if dataset in names:
        return dataset
    for config in names:
        if OmegaConf.load(DATASET_CONF / f"{config}.yaml").get("name") == dataset:
            return config
    return None


def try_writing(folder: Path) -> None:
    """Create ``folder`` and a file in it, then remove what was created."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    finally:
        for path in missing:  # deepest first: leave the tree as it was
            with contextlib.suppress(OSError):
                path.rmdir()


def check_writable_folder(cfg: DictConfig, key: str, also: str = "") -> None:
    """``paths.<key>`` can be written (made and removed again if missing), else one
    UserError naming the key; ``also``: the other keys that set it."""
    folder = Path(cfg.paths[key])
    try:
        try_writing(folder)
    except OSError as err:
        raise UserError(
            f"paths.{key}: cannot write to {folder} ({err.strerror or err}); pass "
            f"paths.{key}=<a writable folder>{also}"
        ) from None


# The folders the others are made from, with the defaults conf/paths/default.yaml gives.
ROOT_PATHS = {"data_dir": "data", "results_dir": "results", "log_dir": "outputs"}


def check_paths(cfg: DictConfig) -> None:
    """No path is empty: ``paths.results_dir=`` would put records under the filesystem's
    root (``/runs``)."""
    for key in ROOT_PATHS:
        value = cfg.paths.get(key)
        if not isinstance(value, str) or not value.strip():
            raise UserError(
                f"paths.{key} is empty ({value!r}); pass a folder, e.g. "
                f"paths.{key}={ROOT_PATHS[key]}"
            )
