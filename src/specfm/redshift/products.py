"""Names of the redshift stage's products, in one place for the rule file, the scripts and the tests
(import-light on purpose: the Snakefile reads it at parse time)."""

# Figures of results/redshift/figures/{sample}_{name}.png (steps._figures draws them; each has a caption
# workflow/report/redshift_{name}.rst): Figs 5-6, 7/11, 8/12, 13 and 9-10 of the SpecPT paper.
FIGURES = ("reconstructions", "z_vs_true", "residual_hist", "residual_zbins", "umap")
