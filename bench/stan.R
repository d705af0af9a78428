# vb_stan() against Stan's own methods on the same Stan programs and data:
# rstan::vb() (ADVI, meanfield and fullrank, defaults) and NUTS (the
# reference).  Per posterior and method: the largest error of a posterior
# mean in posterior sds, the smallest and largest sd ratio, the mean
# 1-Wasserstein distance per parameter (in posterior sds), and elapsed
# seconds without compilation.  "ok" = every mean within 0.1 sd and every
# sd within 10% (the criterion of issue 19).
#
#   Rscript bench/stan.R            (after make install; R_LIBS=.lib)
#
# The posteriors are those of bench/posteriors/posteriors.R (the vb_density
# benchmark set: elements with `stan` and `stan_data`) when present, else the
# five of bench/stan/posteriors.R.  Each program is compiled once (about a
# minute).  Knobs: VBAYES_BENCH_NUTS_ITER (iterations per NUTS chain, 4
# chains, half warm-up; default 2000), VBAYES_BENCH_STAN_ONLY (a regex on
# posterior names).

suppressPackageStartupMessages(library(vbayes))
if (!requireNamespace("rstan", quietly = TRUE)) {
  message("bench/stan.R: rstan is not installed; nothing to compare with.")
  quit(status = 0)
}

here <- local({
  d <- getOption("vbayes.bench.dir")
  if (is.null(d)) {
    a <- grep("^--file=", commandArgs(FALSE), value = TRUE)
    d <- if (length(a)) dirname(normalizePath(sub("^--file=", "", a[1]))) else "bench"
  }
  d
})
nuts_iter <- as.integer(Sys.getenv("VBAYES_BENCH_NUTS_ITER", "2000"))
only <- Sys.getenv("VBAYES_BENCH_STAN_ONLY", "")

shared <- Sys.getenv("VBAYES_BENCH_POSTERIORS", file.path(here, "posteriors", "posteriors.R"))
post <- NULL
if (file.exists(shared)) {
  env <- new.env()
  sys.source(shared, envir = env)
  cand <- mget(ls(env), envir = env)
  # the set: a list of posteriors, or a function returning one
  for (v in cand) {
    if (is.function(v) && length(formals(v)) == 0L) v <- tryCatch(v(), error = function(e) NULL)
    if (is.list(v) && length(v) && all(vapply(v, function(p) is.list(p) && !is.null(p$stan), TRUE))) {
      post <- v
      break
    }
  }
  set_name <- if (nzchar(Sys.getenv("VBAYES_BENCH_POSTERIORS"))) shared else "bench/posteriors/posteriors.R"
}
if (is.null(post)) {
  sys.source(file.path(here, "stan", "posteriors.R"), envir = environment())
  post <- stan_bench_posteriors()
  set_name <- "bench/stan/posteriors.R"
}
if (nzchar(only)) post <- post[grepl(only, names(post))]

# 1-Wasserstein distance between two samples of one variable, by quantiles
w1 <- function(a, b) {
  u <- (seq_len(1000) - 0.5) / 1000
  mean(abs(stats::quantile(a, u, names = FALSE) - stats::quantile(b, u, names = FALSE)))
}
score <- function(D, ref) {
  s <- apply(ref, 2, stats::sd)
  r <- apply(D, 2, stats::sd) / s
  c(mean_err = max(abs(colMeans(D) - colMeans(ref)) / s), sd_min = min(r), sd_max = max(r),
    w1 = mean(vapply(seq_len(ncol(ref)), function(j) w1(D[, j], ref[, j]), 0) / s))
}
timed <- function(expr) {
  t0 <- proc.time()[["elapsed"]]
  v <- tryCatch(suppressWarnings(expr), error = function(e) e)
  list(value = v, time = proc.time()[["elapsed"]] - t0)
}

cat(sprintf("\n### vb_stan() vs rstan::vb() and NUTS (%s)\n\n", set_name))
cat(sprintf("Machine: %d cores, load average %s at the start; %s; rstan %s; %s\n\n", parallel::detectCores(),
            paste(sprintf("%.2f", as.numeric(strsplit(sub(".*load average: ", "",
              system("uptime", intern = TRUE)), ", ")[[1]])), collapse = " "),
            R.version.string, as.character(utils::packageVersion("rstan")), format(Sys.time(), "%Y-%m-%d %H:%M UTC", tz = "UTC")))
cat("| posterior | d | near-Gaussian | method | max mean error (sd) | sd ratio | W1 (sd) | ok | s | note |\n")
cat("|---|---|---|---|---|---|---|---|---|---|\n")
print_row <- function(r) with(r, cat(sprintf("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n",
  posterior, d, gaussian, method, format(mean_err_sd), format(sd_ratio), format(w1_sd), ok, format(seconds), note)))

rows <- list()
for (nm in names(post)) {
  p <- post[[nm]]
  message(sprintf("bench/stan.R: %s", nm))
  set.seed(1)
  vf <- timed(vb_stan(p$stan, data = p$stan_data, control = vb_control(quiet = TRUE)))
  if (inherits(vf$value, "error")) {
    message("  vb_stan failed: ", conditionMessage(vf$value))
    next
  }
  fit <- vf$value
  sm <- fit$stan$model
  pars <- fit$stan$par_names
  nuts <- timed(rstan::sampling(sm, data = p$stan_data, chains = 4, iter = nuts_iter, seed = 1,
                                refresh = 0))
  ref <- as.matrix(nuts$value)[, pars, drop = FALSE]
  if (!is.null(p$exact)) { # exact Gaussian draws replace NUTS as the reference
    R <- chol(p$exact$Sigma)
    ref <- t(p$exact$mean + crossprod(R, matrix(rnorm(length(p$exact$mean) * 8000), ncol = 8000)))
    colnames(ref) <- pars
  }
  rhat <- max(rstan::summary(nuts$value)$summary[pars, "Rhat"], na.rm = TRUE)
  set.seed(2)
  vm <- timed(vb_stan(sm, data = p$stan_data, approx = "meanfield", control = vb_control(quiet = TRUE)))
  res <- list(
    "vb_stan fullrank" = list(D = draws(fit, 4000)[, pars, drop = FALSE], time = fit$time,
                              note = if (fit$converged) "" else "not converged"),
    "vb_stan meanfield" = if (!inherits(vm$value, "error"))
      list(D = draws(vm$value, 4000)[, pars, drop = FALSE], time = vm$value$time,
           note = if (vm$value$converged) "" else "not converged")
    else list(D = NULL, time = vm$time, note = conditionMessage(vm$value)))
  for (alg in c("meanfield", "fullrank")) {
    a <- timed(rstan::vb(sm, data = p$stan_data, algorithm = alg, seed = 1, refresh = 0))
    ok <- !inherits(a$value, "error") && inherits(a$value, "stanfit") &&
      all(pars %in% colnames(as.matrix(a$value)))
    res[[paste("rstan::vb", alg)]] <- if (ok)
      list(D = as.matrix(a$value)[, pars, drop = FALSE], time = a$time, note = "")
    else list(D = NULL, time = a$time,
              note = if (inherits(a$value, "error")) substr(conditionMessage(a$value), 1, 60) else "failed")
  }
  res[["NUTS (reference)"]] <- list(D = if (is.null(p$exact)) NULL else as.matrix(nuts$value)[, pars, drop = FALSE],
                                    time = nuts$time,
                                    note = sprintf("4 x %d iterations, max Rhat %.3f%s", nuts_iter, rhat,
                                                   if (is.null(p$exact)) "" else "; reference: exact draws"))
  for (m in names(res)) {
    r <- res[[m]]
    sc <- if (is.null(r$D)) c(mean_err = NA, sd_min = NA, sd_max = NA, w1 = NA) else score(r$D, ref)
    ok <- is.finite(sc[["mean_err"]]) && sc[["mean_err"]] < 0.1 && sc[["sd_min"]] > 0.9 && sc[["sd_max"]] < 1.1
    rows[[length(rows) + 1L]] <- data.frame(
      posterior = nm, d = length(fit$stan$unc_names),
      gaussian = if (is.null(p$gaussian)) "" else if (isTRUE(p$gaussian)) "yes" else "no", method = m,
      mean_err_sd = round(sc[["mean_err"]], 3), sd_ratio = if (is.na(sc[["sd_min"]])) NA else
        sprintf("%.2f-%.2f", sc[["sd_min"]], sc[["sd_max"]]), w1_sd = round(sc[["w1"]], 3),
      ok = if (is.null(r$D)) "" else if (ok) "yes" else "no", seconds = round(r$time, 2),
      note = r$note, stringsAsFactors = FALSE)
    print_row(rows[[length(rows)]])
  }
}
tab <- do.call(rbind, rows)
tv <- tab[tab$method != "NUTS (reference)", ]
ok_by <- tapply(tv$ok == "yes", tv$method, sum)
cat("\nPosteriors within 0.1 sd and 10% in sd, by method: ",
    paste(sprintf("%s %d/%d", names(ok_by), ok_by, length(unique(tab$posterior))), collapse = "; "), "\n", sep = "")
