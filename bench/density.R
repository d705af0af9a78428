# Benchmark: vb_density() on standard posteriors (bench/posteriors/posteriors.R)
# against long NUTS runs (the reference) and Stan's ADVI (rstan::vb, meanfield
# and fullrank, default settings).  vbayes fits start from zeros on the
# unconstrained scale with default settings (mode first), fullrank and
# meanfield.  Reported per posterior and method, on the constrained scale
# (draws): the largest |mean error| in reference sds, the worst sd ratio, the
# mean 1-Wasserstein distance between the standardised margins, the time, the
# convergence flag and vb_diagnose()'s k-hat and ESS.
#
# Run: R_LIBS=<lib with vbayes> Rscript bench/density.R [reference] [name ...]
#   "reference" only compiles the Stan programs and runs NUTS and ADVI (cached
#   under bench/posteriors/cache/, which git ignores).  NUTS: 4 chains x 2000
#   iterations (1000 warm-up); each program is compiled once (about a minute).
# Results: bench/RESULTS-density.md.
suppressPackageStartupMessages(library(vbayes))
here <- if (file.exists("bench/posteriors/posteriors.R")) "bench" else "."
source(file.path(here, "posteriors", "posteriors.R"))
cache <- file.path(here, "posteriors", "cache")
dir.create(cache, showWarnings = FALSE)
args <- commandArgs(TRUE)
ref_only <- "reference" %in% args
which <- setdiff(args, "reference")
P <- posteriors()
if (length(which)) P <- P[which]
have_stan <- requireNamespace("rstan", quietly = TRUE)
# Debian's r-cran-bh is a virtual package: Boost lives in /usr/include
if (have_stan && !nzchar(system.file("include", package = "BH")) && dir.exists("/usr/include/boost"))
  rstan::rstan_options(boost_lib = "/usr/include")
`%||%` <- function(a, b) if (is.null(a)) b else a

# draws of the named parameters from a stanfit (S x m) and the elapsed time
stan_reference <- function(p) {
  f <- file.path(cache, paste0(p$name, ".rds"))
  if (file.exists(f)) return(readRDS(f))
  if (!have_stan) return(NULL)
  t0 <- proc.time()[["elapsed"]]
  fm <- file.path(cache, paste0(p$name, "_model.rds"))
  sm <- if (file.exists(fm)) readRDS(fm) else rstan::stan_model(model_code = p$stan, model_name = p$name)
  saveRDS(sm, fm)
  tc <- proc.time()[["elapsed"]] - t0
  # the parameters come first, in declaration order, which is par_names' order
  get <- function(fit) {
    a <- as.matrix(fit)[, seq_along(p$par_names), drop = FALSE]
    colnames(a) <- p$par_names
    a
  }
  out <- list(compile = tc)
  if (is.null(p$exact)) {
    t0 <- proc.time()[["elapsed"]]
    nuts <- rstan::sampling(sm, data = p$stan_data, chains = 4, iter = 2000, seed = 1,
                            refresh = 0, cores = 1, control = list(adapt_delta = 0.95))
    out$nuts_time <- proc.time()[["elapsed"]] - t0
    out$nuts <- get(nuts)
    s <- rstan::summary(nuts)$summary
    out$nuts_rhat <- max(s[, "Rhat"], na.rm = TRUE)
    out$nuts_divergent <- sum(rstan::get_divergent_iterations(nuts))
  } else {
    R <- chol(p$exact$Sigma)
    out$nuts <- t(p$exact$mean + t(matrix(rnorm(4000 * ncol(R)), 4000) %*% R))
    colnames(out$nuts) <- p$par_names
    out$nuts_time <- NA
  }
  for (alg in c("meanfield", "fullrank")) {
    t0 <- proc.time()[["elapsed"]]
    v <- tryCatch(suppressWarnings(suppressMessages(utils::capture.output(
      fit <- rstan::vb(sm, data = p$stan_data, algorithm = alg, seed = 1, refresh = 0)))),
      error = function(e) e)
    el <- proc.time()[["elapsed"]] - t0
    out[[paste0("advi_", alg)]] <- if (inherits(v, "error") || !exists("fit"))
      list(error = conditionMessage(v), time = el) else list(draws = get(fit), time = el)
    rm(list = intersect("fit", ls()))
  }
  saveRDS(out, f)
  out
}

# accuracy of draws X (S x m) against reference draws R (S' x m)
metrics <- function(X, R) {
  mr <- colMeans(R); sr <- apply(R, 2, sd)
  merr <- abs(colMeans(X) - mr) / sr
  sdr <- apply(X, 2, sd) / sr
  pr <- (seq_len(1000) - 0.5) / 1000
  w1 <- vapply(seq_len(ncol(R)), function(j)
    mean(abs(quantile((X[, j] - mr[j]) / sr[j], pr, names = FALSE) -
             quantile((R[, j] - mr[j]) / sr[j], pr, names = FALSE))), 0)
  c(mean_err = max(merr), sd_ratio_min = min(sdr), sd_ratio_max = max(sdr), w1 = mean(w1))
}

rows <- list()
for (p in P) {
  cat(sprintf("== %s (d = %d): gradient check %.1e\n", p$name, length(p$par_names),
              gradient_check(p)))
  ref <- stan_reference(p)
  if (ref_only) next
  if (is.null(ref)) { cat("  no rstan: skipped\n"); next }
  R <- ref$nuts
  row <- function(method, X, time, conv = NA, khat = NA, ess = NA, note = "") {
    m <- if (is.null(X)) rep(NA, 4) else metrics(X, R)
    rows[[length(rows) + 1L]] <<- data.frame(posterior = p$name, d = length(p$par_names),
      method = method, mean_err_sd = round(m[1], 3), sd_ratio = sprintf("%.2f-%.2f", m[2], m[3]),
      w1 = round(m[4], 3), seconds = round(time, 2), converged = conv, khat = round(khat, 2),
      ess = round(ess), note = note)
    print(rows[[length(rows)]], row.names = FALSE)
  }
  for (alg in c("meanfield", "fullrank")) {
    a <- ref[[paste0("advi_", alg)]]
    row(paste("ADVI", alg), a$draws, a$time, note = if (is.null(a$draws)) substr(a$error, 1, 60) else "")
  }
  for (ap in c("fullrank", "meanfield")) {
    set.seed(1)
    t0 <- proc.time()[["elapsed"]]
    w <- character(0)
    fit <- withCallingHandlers(
      tryCatch(vb_density(p$log_density, p$init, lower = p$lower, upper = p$upper, approx = ap,
                          control = vb_control(quiet = TRUE)), error = function(e) e),
      warning = function(w0) { w <<- c(w, conditionMessage(w0)); invokeRestart("muffleWarning") },
      message = function(m) { w <<- c(w, conditionMessage(m)); invokeRestart("muffleMessage") })
    el <- proc.time()[["elapsed"]] - t0
    if (inherits(fit, "error")) { row(paste("vbayes", ap), NULL, el, FALSE, note = substr(conditionMessage(fit), 1, 80)); next }
    dg <- vb_diagnose(fit, S = 4000)
    row(paste("vbayes", ap), draws(fit, 4000), el, fit$converged, dg$khat, dg$ess,
        note = if (length(w)) substr(paste(w, collapse = "; "), 1, 80) else "")
  }
  cat(sprintf("  NUTS: %.1f s, max Rhat %.3f, %s divergent; compile %.0f s\n", ref$nuts_time,
              ref$nuts_rhat %||% NA, format(ref$nuts_divergent %||% NA), ref$compile))
}
if (length(rows)) {
  tab <- do.call(rbind, rows)
  cat("\n")
  print(tab, row.names = FALSE)
  saveRDS(tab, file.path(cache, paste0("results_", paste(names(P), collapse = "_"), ".rds")))
}
