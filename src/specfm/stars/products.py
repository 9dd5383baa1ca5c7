"""Names of the stars stage's products, in one place for the rule file, the scripts and the tests
(import-light on purpose: the Snakefile reads it at parse time)."""

MSA_FIGURES = ("residuals", "kiel", "alpha_fe", "age_metallicity", "zscores", "reconstruction")
FIGURES = (*MSA_FIGURES, "baseline")  # + the MSA beside the gradient-boosted trees
