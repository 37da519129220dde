"""The one packaging setting pyproject.toml cannot express: the repository's configs/ and
examples/data/ ship inside the wheel, as repbend/_root/configs/ and
repbend/_root/examples/data/, while git keeps them once, at the repository root.

A checkout reads them where they are; an installed package reads its copy
(repbend.resources.ROOT), so `repbend train tiny-test` and `repbend run
configs/smollm2-cpu.yaml` work from any folder. Which of their files ship is set in
pyproject.toml ([tool.setuptools.package-data]), like everything else.
"""
from setuptools import find_namespace_packages, find_packages, setup

# Package inside the wheel -> its folder in the repository (subfolders follow).
SHIPPED = {"repbend._root.configs": "configs", "repbend._root.examples.data": "examples/data"}
SUBFOLDERS = [f"{package}.{sub}" for package, folder in SHIPPED.items() for sub in find_namespace_packages(folder)]

setup(packages=find_packages("src") + list(SHIPPED) + SUBFOLDERS, package_dir={"": "src", **SHIPPED})
