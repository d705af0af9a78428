# Runs every benchmark script in bench/ with the installed vbayes:
#
#   Rscript bench/run.R [script ...]      (`make bench` installs, then runs this)
#
# Benchmarks, in this order, each if present: the list `benchmarks` below
# (other bench/*.R files are helpers).  Names given on the command line
# run only those.  Each script is sourced in its own environment in this one R
# session, so the Stan model of bench/glm.stan is compiled once for all.
# Output is markdown on stdout (the tables of bench/RESULTS.md), preceded by a
# description of the machine; a script that fails is reported and the others
# still run; the exit status is non-zero if any failed.

benchmarks <- c("glm.R", "accuracy.R", "sgvb.R", "lds.R", "speed.R", "density.R", "stan.R", "glmm.R",
                "amortized.R", "predictive.R", "ecosys.R", "populations.R", "lds_block.R")

args <- commandArgs(trailingOnly = TRUE)
here <- local({
  a <- grep("^--file=", commandArgs(FALSE), value = TRUE)
  if (length(a)) dirname(normalizePath(sub("^--file=", "", a[1]))) else "bench"
})
options(vbayes.bench.dir = here)
if (length(args)) {
  unknown <- setdiff(args, benchmarks)
  if (length(unknown))
    stop("bench/run.R: unknown benchmark(s) ", paste(unknown, collapse = ", "),
         "; choose from ", paste(benchmarks, collapse = ", "), call. = FALSE)
  benchmarks <- args
}
present <- benchmarks[file.exists(file.path(here, benchmarks))]
if (!requireNamespace("vbayes", quietly = TRUE))
  stop("bench/run.R: vbayes is not installed; run `make bench`, which installs it first.", call. = FALSE)

# ------------------------------------------------------------- the machine --
cpu <- tryCatch({
  l <- system2("lscpu", stdout = TRUE, stderr = FALSE)
  trimws(sub("^Model name:", "", grep("^Model name:", l, value = TRUE)[1]))
}, error = function(e) NA_character_, warning = function(w) NA_character_)
si <- utils::sessionInfo()
load <- tryCatch(paste(strsplit(readLines("/proc/loadavg", warn = FALSE)[1], " ")[[1]][1:3], collapse = " "), error = function(e) NA)
cat("# vbayes benchmarks\n\n")
cat(sprintf("- date: %s UTC\n", format(Sys.time(), tz = "UTC", usetz = FALSE)))
cat(sprintf("- machine: %s, %s logical cores\n", cpu, parallel::detectCores()))
cat(sprintf("- %s; vbayes %s\n", R.version.string, utils::packageVersion("vbayes")))
cat(sprintf("- BLAS: %s\n- LAPACK: %s\n", si$BLAS, si$LAPACK))
cat(sprintf("- load average at start (1, 5, 15 min): %s\n", load))
for (p in c("rstan", "MASS"))
  cat(sprintf("- %s: %s\n", p, if (requireNamespace(p, quietly = TRUE))
    as.character(utils::packageVersion(p)) else "not installed (its peers are skipped)"))
cat(sprintf("- benchmarks: %s\n", paste(present, collapse = ", ")))

failed <- character(0)
for (b in present) {
  t <- system.time(ok <- tryCatch({
    sys.source(file.path(here, b), envir = new.env(parent = globalenv()), chdir = FALSE)
    TRUE
  }, error = function(e) {
    cat(sprintf("\n**%s failed:** %s\n", b, conditionMessage(e)))
    FALSE
  }))[["elapsed"]]
  cat(sprintf("\n_%s: %.0f s_\n", b, t))
  if (!ok) failed <- c(failed, b)
}
load <- tryCatch(paste(strsplit(readLines("/proc/loadavg", warn = FALSE)[1], " ")[[1]][1:3], collapse = " "), error = function(e) NA)
cat(sprintf("\n- load average at end: %s\n", load))
if (length(failed)) {
  cat(sprintf("failed: %s\n", paste(failed, collapse = ", ")))
  quit(status = 1)
}
