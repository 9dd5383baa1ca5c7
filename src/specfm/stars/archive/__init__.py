"""Real-archive fetchers for the stars stage (full scale): Gaia DR3 TAP + DataLink, the Gaia archive's
``*_best_neighbour`` crossmatches, SkyMapper DR4 TAP, the ESA XP bulk files and the APOGEE / GALAH /
RAVE label catalogues, merged into one raw Parquet file per HEALPix partition.

Everything is partitioned by the HEALPix index encoded in the Gaia source_id (`partition`), so the
220 million XP stars become a few thousand independent, restartable jobs and no job holds the whole
sky. Column names follow `specfm.stars.columns`; missing values are NaN, never 0.

Modules: partition (source_id ranges), tap (retrying TAP jobs), gaia, skymapper, xp_bulk, labels,
merge (join + atomic Parquet writer).
"""
