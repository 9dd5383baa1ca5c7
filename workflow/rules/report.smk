# Report: `snakemake --report report.html` collects every output wrapped in report() with its
# caption from workflow/report/. The workflow-level description is workflow/report/workflow.rst.


report: "../report/workflow.rst"
