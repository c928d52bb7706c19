"""`python -m pipelines.api`: see `pipelines.api.standalone.main`."""

from pipelines.api.standalone import main

if __name__ == "__main__":
    main()
