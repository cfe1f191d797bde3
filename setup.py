"""The one compiled piece (`laneway/router/_scan.c`, see `laneway/router/scan.py`), built
where a C compiler exists. `optional`: without one the install goes on and the router uses
the same functions in Python. Everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("laneway.router._scan", ["src/laneway/router/_scan.c"],
                             optional=True)])
