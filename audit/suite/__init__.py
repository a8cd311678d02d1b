"""The suite file: its schema (:mod:`.schema`), TOML positions for located errors
(:mod:`.tomlpos`). ``load_suite`` and the schema's public names are re-exported here."""
