"""The commands: each `repbend <command>` as a function over the library packages (data
build, main job, compare, tune, analyze, eval, task arithmetic). The top layer below the
command line (:mod:`repbend.cli`) and the Python API (:mod:`repbend.api`); no library
module imports from here (``tests/test_layers.py``)."""
