# Runs the testthat suite against the installed package and prints
# testthat's summary followed by a machine-readable "N passed, N failed" line.
# TEST_FILTER (a regular expression on test file names) runs a subset.
filter <- Sys.getenv("TEST_FILTER")
res <- testthat::test_dir("tests/testthat", package = "vbayes", filter = if (nzchar(filter)) filter,
                          load_package = "installed", reporter = "summary",
                          stop_on_failure = FALSE)
df <- as.data.frame(res)
failed <- sum(df$failed) + sum(df$error)
passed <- sum(df$nb) - sum(df$failed) - sum(df$skipped)
cat(sprintf("\n%d passed, %d failed, %d skipped\n", passed, failed, sum(df$skipped)))
quit(status = if (failed > 0) 1 else 0)
