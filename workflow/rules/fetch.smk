# The only rules that touch the network. One download rule and (for archives with `members`)
# one unpack rule per declared source, so each has its own pinned checksum.
# A source with a pinned sha256 is wrapped in ensure(); one without is trust-on-first-use:
# the first fetch records its sha256 in the lock file, later fetches verify against it. The unpack
# step checks the archive against the same pin (or lock entry) again: a file placed by hand never
# goes through the fetch rule. A grid source (kind http_grid, e.g. PHOENIX-ACES) is many files, one
# fetch job per file (rule fetch_grid_file), each trust-on-first-use under its own lock key.

include: "helpers/fetch.smk"


for _name, _source in FILE_SOURCES.items():

    rule:
        name:
            f"fetch_{_name}"
        output:
            archive=fetched_output(_name),
        params:
            name=_name,
            source=_source,
            lock=config["checksum_lock"],
            fetch=config["fetch"],
        log:
            f"logs/fetch/{_name}.log",
        benchmark:
            rule_bench(f"fetch_{_name}"),
        resources:
            mem_mb=1000,
            runtime=120,
        localrule: True
        script:
            "../../scripts/fetch_source.py"

    if _source.get("members"):

        rule:
            name:
                f"unpack_{_name}"
            input:
                archive=archive_path(_name),
            output:
                manifest=manifest_path(_name),
            params:
                members=_source["members"],
                pin=unpack_pin(_name),
            log:
                f"logs/fetch/{_name}_unpack.log",
            benchmark:
                rule_bench(f"unpack_{_name}"),
            resources:
                mem_mb=1000,
                runtime=30,
            script:
                "../../scripts/unpack_source.py"


rule fetch_grid_file:
    """One file of an http_grid source; its sha256 recorded in the lock on first fetch, then checked."""
    output:
        path="resources/archives/{gsource}/{gfile}",
    wildcard_constraints:
        gsource=one_of(GRID_SOURCES),
        gfile=r"[^/]+",
    params:
        source=grid_source_of,
        lock=config["checksum_lock"],
        fetch=config["fetch"],
    log:
        "logs/fetch/{gsource}/{gfile}.log",
    benchmark:
        rule_bench("fetch_{gsource}_{gfile}")
    resources:
        mem_mb=500,
        runtime=30,
    localrule: True
    script:
        "../../scripts/fetch_grid_file.py"
