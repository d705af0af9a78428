# Issue 18: vb() against glm() (and lm() for gaussian) across sizes, per
# family, fullrank and meanfield; the cost of one fullrank iteration against
# crossprod(X); a meanfield sweep against its floor; peak memory of vb() and
# glm() on the same data.  Timings are CPU-second (user + system) medians of
# `reps` runs in this one R process: the machine is shared by several
# developers, so elapsed time measures the load; load averages are printed.
# VBAYES_BENCH_SIZES="1e4x10,1e5x200" picks sizes ("" skips the table; default the
# grid n in 1e4, 1e5, 1e6 by p in 10, 30, 200 without n = 1e6, p = 200, whose
# 1.6 GB design and hour-long glm() do not fit a bounded run), VBAYES_BENCH_INTERFACES
# "formula,matrix" (vb() vs glm()/lm(), vb_fit() vs glm.fit()/lm.fit()),
# VBAYES_BENCH_SECTIONS="iter,sweep,memory,openblas" the other sections; VBAYES_BENCH_REPS reps;
# VBAYES_BENCH_FAMILIES="gaussian" the families of the table (default all three).
# "openblas" reruns the table for VBAYES_BENCH_OPENBLAS_SIZES (default 1e5x30,1e5x200) and
# the iteration section in a child Rscript on OpenBLAS with one thread: R_LD_LIBRARY_PATH
# (not LD_LIBRARY_PATH, which R's ldpaths would override) points at the OpenBLAS
# libblas.so.3 that `make bench-deps` found or unpacked into .lib/openblas.
suppressPackageStartupMessages(library(vbayes))
reps <- as.integer(Sys.getenv("VBAYES_BENCH_REPS", "3"))
grid_default <- "1e4x10,1e4x30,1e4x200,1e5x10,1e5x30,1e5x200,1e6x10,1e6x30"
sizes <- strsplit(strsplit(Sys.getenv("VBAYES_BENCH_SIZES", grid_default), ",")[[1]], "x")
sections <- strsplit(Sys.getenv("VBAYES_BENCH_SECTIONS", "iter,sweep,memory,openblas"), ",")[[1]]
interfaces <- strsplit(Sys.getenv("VBAYES_BENCH_INTERFACES", "formula,matrix"), ",")[[1]]
load <- function() paste(scan("/proc/loadavg", what = "", n = 3, quiet = TRUE), collapse = " ")
cat(sprintf("# bench/speed.R  %s  nproc %s  R %s  BLAS %s\n", format(Sys.time(), tz = "UTC", usetz = TRUE),
            parallel::detectCores(), getRversion(), extSoftVersion()[["BLAS"]]))
# CPU seconds (user + system) of f(), median of r runs; the value of the last run
med <- function(f, r = reps) {
  tt <- numeric(r); out <- NULL
  for (i in seq_len(r)) {
    gc(FALSE)
    st <- system.time(out <- f())
    tt[i] <- st[["user.self"]] + st[["sys.self"]]
  }
  structure(median(tt), value = out)
}
make_data <- function(n, p, fam, seed = 1) {
  set.seed(seed)
  X <- cbind("(Intercept)" = 1, matrix(rnorm(n * (p - 1)), n, p - 1) / sqrt(p))
  colnames(X) <- c("(Intercept)", paste0("x", seq_len(p - 1)))
  b <- c(0.3, rnorm(p - 1, sd = 1))
  eta <- drop(X %*% b)
  y <- switch(fam, gaussian = eta + rnorm(n), poisson = rpois(n, exp(0.5 * eta)), binomial = rbinom(n, 1, plogis(eta)))
  list(X = X, y = y)
}
ctl <- vb_control(quiet = TRUE)
fam_of <- list(gaussian = gaussian(), poisson = poisson(), binomial = binomial())
fam_tab <- intersect(names(fam_of), strsplit(Sys.getenv("VBAYES_BENCH_FAMILIES", "gaussian,poisson,binomial"), ",")[[1]])
# warm up: the first vb() call loads the namespaces the formula front end uses
invisible(vb(mpg ~ wt, data = mtcars, control = ctl)); invisible(glm(mpg ~ wt, data = mtcars))
# Per row: the peer (glm(), and lm() for gaussian) and vb fullrank / meanfield,
# through the formula interface (same data frame, y ~ .) or the matrix one
# (glm.fit(), lm.fit(), vb_fit() on the same X).  Small problems are timed as
# the median of `reps` runs of a loop long enough to measure (>= 0.2 s); a run
# where n p > 2e6 counts once (medians of 3 would not fit the time budget).
rows <- list()
if (length(sizes)) cat("\n| interface | family | n | p | glm s | lm s | vb fullrank s (it) | / glm | / lm | vb meanfield s (it) | / glm | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
for (sz in sizes) {
  n <- as.numeric(sz[1]); p <- as.integer(sz[2])
  r <- if (n * p > 2e6) 1L else reps
  loops <- max(1L, as.integer(ceiling(2e6 / (n * p))))     # enough calls to time (>= 0.1 s)
  for (fam in fam_tab) {
    d <- make_data(n, p, fam)
    df <- as.data.frame(d$X[, -1, drop = FALSE]); df$y <- d$y
    for (ifc in interfaces) {
      fm <- fam_of[[fam]]
      calls <- if (ifc == "formula") list(
        glm = function() glm(y ~ ., family = fm, data = df),
        lm = function() lm(y ~ ., data = df),
        full = function() vb(y ~ ., family = fm, data = df, control = ctl),
        mf = function() suppressWarnings(vb(y ~ ., family = fm, data = df, approx = "meanfield", control = ctl)))
      else list(
        glm = function() glm.fit(d$X, d$y, family = fm),
        lm = function() lm.fit(d$X, d$y),
        full = function() vb_fit(d$X, d$y, family = fm, control = ctl),
        mf = function() suppressWarnings(vb_fit(d$X, d$y, family = fm, approx = "meanfield", control = ctl)))
      timed <- function(f) {
        t <- med(function() { for (i in seq_len(loops)) v <- f(); v }, r)
        structure(t / loops, value = attr(t, "value"))
      }
      tg <- timed(calls$glm)
      tl <- if (fam == "gaussian") timed(calls$lm) else NA
      tf <- timed(calls$full)
      tm <- timed(calls$mf)
      f <- attr(tf, "value"); m <- attr(tm, "value")
      cat(sprintf("| %s | %s | %g | %d | %.4f | %s | %.4f (%d) | %.2f | %s | %.4f (%d) | %.2f | %s |\n", ifc, fam, n, p, tg,
                  if (is.na(tl)) "" else sprintf("%.4f", tl), tf, f$iterations, tf / tg,
                  if (is.na(tl)) "" else sprintf("%.2f", tf / tl), tm, m$iterations, tm / tg, load()))
      rows[[length(rows) + 1]] <- data.frame(ifc, fam, n, p, tg, tl, tf, itf = f$iterations, tm, itm = m$iterations)
      rm(f, m)
    }
    rm(d, df); gc(FALSE)
  }
}

# ---- a fullrank iteration against crossprod(X), n = 1e5, p = 200 ----------
if ("iter" %in% sections) {
cat("\n## Fullrank iteration vs crossprod(X) (n = 1e5, p = 200)\n\n| family | crossprod s | vb fullrank s | iterations | per iteration / crossprod | load |\n|---|---|---|---|---|---|\n")
for (fam in c("poisson", "binomial")) {
  d <- make_data(1e5, 200, fam)
  tc <- med(function() crossprod(d$X), 3L)
  tf <- med(function() vb_fit(d$X, d$y, family = fam_of[[fam]], control = ctl), 1L)
  it <- attr(tf, "value")$iterations
  cat(sprintf("| %s | %.3f | %.3f | %d | %.2f | %s |\n", fam, tc, tf, it, tf / (it + 1) / tc, load()))
}
}

# ---- a meanfield sweep against its floor, n = 1e5, p = 100 ----------------
if ("sweep" %in% sections) {
cat("\n## Meanfield sweep vs its floor (n = 1e5, p = 100)\n\n")
d <- make_data(1e5, 100, "poisson")
t_read <- med(function() colSums(d$X), 5L)
t_exp <- med(function() exp(d$X), 5L)
floor_s <- t_read + t_exp
cat(sprintf("floor = X read once (colSums, %.4f s) + n p exponentials (exp(X), %.4f s) = %.4f s\n\n", t_read, t_exp, floor_s))
cat("A sweep is (fit CPU) / (sweeps + 1), the start counted as a pass (fixed costs included); the\n",
    "marginal sweep is (CPU at maxit = 6 - CPU at maxit = 1) / 5 at tol = 1e-300, the cost of one more sweep.\n\n", sep = "")
cat("| family | vb meanfield s | sweeps | per sweep s | / floor | marginal sweep s | / floor | load |\n|---|---|---|---|---|---|---|---|\n")
sweep <- c(); msweep <- c()
for (fam in c("poisson", "binomial")) {
  dd <- make_data(1e5, 100, fam)
  tm <- med(function() suppressWarnings(vb_fit(dd$X, dd$y, family = fam_of[[fam]], approx = "meanfield", control = ctl)), 3L)
  it <- attr(tm, "value")$iterations
  sweep[fam] <- tm / (it + 1)
  mk <- function(k) function() suppressWarnings(vb_fit(dd$X, dd$y, family = fam_of[[fam]], approx = "meanfield",
                                                      control = vb_control(quiet = TRUE, tol = 1e-300, maxit = k)))
  msweep[fam] <- max(0, (med(mk(6L), 3L) - med(mk(1L), 3L)) / 5)
  cat(sprintf("| %s | %.3f | %d | %.4f | %.2f | %.4f | %.2f | %s |\n", fam, tm, it, sweep[fam], sweep[fam] / floor_s,
              msweep[fam], msweep[fam] / floor_s, load()))
}
cat(sprintf("\nbinomial sweep / poisson sweep = %.2f (marginal: %.2f)\n", sweep[["binomial"]] / sweep[["poisson"]],
            msweep[["binomial"]] / msweep[["poisson"]]))
}

# ---- peak memory: R heap max used beyond the data, and the process peak ---
if ("memory" %in% sections) {
cat("\n## Peak memory beyond the data (n = 1e6, p = 10; forked child per call)\n\n| family | call | R heap max used, MB | VmHWM increase, MB |\n|---|---|---|---|\n")
peak <- function(expr_fun) {
  job <- parallel::mcparallel({
    hwm <- function() as.numeric(sub("[^0-9]*([0-9]+).*", "\\1", grep("^VmHWM", readLines("/proc/self/status"), value = TRUE))) / 1024
    rss <- function() as.numeric(sub("[^0-9]*([0-9]+).*", "\\1", grep("^VmRSS", readLines("/proc/self/status"), value = TRUE))) / 1024
    gc(reset = TRUE)
    base <- sum(gc()[, 2])
    r0 <- rss()
    try(writeLines("5", "/proc/self/clear_refs"), silent = TRUE)
    expr_fun()
    g <- gc()
    c(heap = sum(g[, ncol(g)]) - base, hwm = hwm() - r0)
  })
  parallel::mccollect(job)[[1]]
}
for (fam in names(fam_of)) {
  d <- make_data(1e6, 10, fam)
  for (call in c("glm", "vb fullrank", "vb meanfield")) {
    f <- switch(call,
      glm = function() glm(d$y ~ d$X - 1, family = fam_of[[fam]]),
      "vb fullrank" = function() vb_fit(d$X, d$y, family = fam_of[[fam]], control = ctl),
      "vb meanfield" = function() suppressWarnings(vb_fit(d$X, d$y, family = fam_of[[fam]], approx = "meanfield", control = ctl)))
    pk <- peak(f)
    cat(sprintf("| %s | %s | %.0f | %.0f |\n", fam, call, pk[["heap"]], pk[["hwm"]]))
  }
}
cat(sprintf("\nX is %.0f MB; load at the end %s\n", 1e6 * 10 * 8 / 2^20, load()))
}

# ---- the same rows on OpenBLAS (one thread), in a child process -------------
if ("openblas" %in% sections) {
cat("\n## OpenBLAS, one thread (child Rscript)\n\n")
cand <- c(Sys.getenv("VBAYES_OPENBLAS"),
          list.files(file.path(getwd(), ".lib", "openblas"), pattern = "^libblas[.]so[.]3$", recursive = TRUE, full.names = TRUE),
          file.path("/usr/lib", c("x86_64-linux-gnu", "aarch64-linux-gnu"), "openblas-pthread", "libblas.so.3"))
cand <- cand[nzchar(cand) & file.exists(cand)]
if (!length(cand)) {
  cat("No OpenBLAS found (run `make bench-deps`); section skipped.\n")
} else {
  dir <- dirname(normalizePath(cand[1]))
  rhome <- R.home("lib")
  env <- c(sprintf("R_LD_LIBRARY_PATH=%s:%s:%s", dir, rhome, Sys.getenv("R_LD_LIBRARY_PATH")),
           "OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1",
           sprintf("VBAYES_BENCH_SIZES=%s", Sys.getenv("VBAYES_BENCH_OPENBLAS_SIZES", "1e5x30,1e5x200")),
           "VBAYES_BENCH_SECTIONS=iter", "VBAYES_BENCH_INTERFACES=formula")
  script <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])
  if (is.na(script) || !file.exists(script)) script <- "bench/speed.R"
  system2(file.path(R.home("bin"), "Rscript"), shQuote(normalizePath(script)), env = env)
}
}
