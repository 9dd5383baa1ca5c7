# The only rules that touch the network. One download rule and (for archives with `members`)
# one unpack rule per declared source, so each has its own pinned checksum.
# A source with a pinned sha256 is wrapped in ensure(); one without is trust-on-first-use:
# the first fetch records its sha256 in the lock file, later fetches verify against it. The unpack
# step checks the archive against the same pin (or lock entry) again: a file placed by hand never
# goes through the fetch rule.


def fetched_output(name):
    path = archive_path(name)
    sha = SOURCES[name].get("sha256")
    return ensure(path, sha256=sha) if sha else path


def unpack_pin(name):
    """What the unpack step checks the archive against (a file placed by hand skips the fetch rule):
    the config's pin, else the lock entry the fetch recorded."""
    sha = SOURCES[name].get("sha256")
    return {
        "sha256": sha,
        "what": f"config sources.{name}.sha256" if sha else "",
        "lock_path": None if sha else config["checksum_lock"],
        "lock_key": None if sha else f"{name}/{SOURCES[name]['filename']}",
    }


for _name, _source in SOURCES.items():

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
