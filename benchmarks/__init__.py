"""The benchmarks, one folder per benchmark (its entry point, its settings in ``schema.py``, its
parts), and ``shared/``, what several of them share. They measure the product from outside: nothing
in ``src/alexnet_mp`` imports them. Each entry point runs as a script (``python
benchmarks/<name>/<entry>.py``) and puts the repository root on the path, so these import as one
package. Results go to ``outputs/benchmarks/`` unless ``output_dir=benchmarks/results`` (the
published figures) is asked for."""
