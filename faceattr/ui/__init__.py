"""The faceattr pages in the Airflow UI: an Airflow 3 plugin (plugin.py) serving a FastAPI app (app.py).

Registered through the `airflow.plugins` entry point in pyproject.toml, so every Airflow process
of an environment where faceattr is installed finds it. Kept free of imports: Airflow imports
the plugin module in every process that loads plugins, task processes included.
"""
