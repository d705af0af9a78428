# Shared helpers of the vbayes benchmarks (sourced by glm.R and accuracy.R;
# not a benchmark itself, so bench/run.R does not run it).
#
# Peers: stats::glm() always; rstan (NUTS and ADVI) when installed.  The Stan
# program bench/glm.stan is compiled at most once per R session: the compiled
# model is kept in the environment .vbayes_bench in the global environment, so
# `Rscript bench/run.R` compiles it once for all scripts.

suppressPackageStartupMessages(library(vbayes))

bench_dir <- function() {
  d <- getOption("vbayes.bench.dir")
  if (is.null(d)) {
    # directory of the script being sourced / run, else ./bench
    a <- grep("^--file=", commandArgs(FALSE), value = TRUE)
    d <- if (length(a)) dirname(normalizePath(sub("^--file=", "", a[1]))) else "bench"
  }
  d
}

if (!exists(".vbayes_bench", envir = globalenv()))
  assign(".vbayes_bench", new.env(), envir = globalenv())
.vbayes_bench <- get(".vbayes_bench", envir = globalenv())

# ---------------------------------------------------------------- timing --

# Median elapsed seconds of `reps` evaluations of f(); the value of the last call
# is returned as attribute "value".
time_median <- function(f, reps = 3L) {
  out <- NULL
  tt <- numeric(reps)
  for (r in seq_len(reps)) {
    gc(FALSE)
    tt[r] <- system.time(out <- f())[["elapsed"]]
  }
  structure(stats::median(tt), times = tt, value = out)
}

# --------------------------------------------------------------- formats --

# A data frame as a GitHub markdown table (numbers with `digits` significant).
md_table <- function(df, digits = 3) {
  fmt <- function(x) {
    if (is.numeric(x) && all(is.na(x) | (x == round(x) & abs(x) < 1e6))) {
      ifelse(is.na(x), "", format(x, scientific = FALSE, trim = TRUE))
    } else if (is.numeric(x)) {
      ifelse(is.na(x), "", formatC(signif(x, digits), digits = digits, format = "fg", flag = "#"))
    } else as.character(x)
  }
  cols <- lapply(df, fmt)
  cols <- lapply(cols, function(x) sub("\\.$", "", trimws(x)))
  head <- paste0("| ", paste(names(df), collapse = " | "), " |")
  rule <- paste0("|", paste(rep("---", ncol(df)), collapse = "|"), "|")
  body <- do.call(paste, c(cols, sep = " | "))
  paste(c(head, rule, paste0("| ", body, " |")), collapse = "\n")
}

say <- function(...) cat(sprintf(...), "\n", sep = "")
section <- function(title) cat("\n### ", title, "\n\n", sep = "")
print_md <- function(df, digits = 3) cat(md_table(df, digits), "\n\n", sep = "")

# ------------------------------------------------------------------ peers --

has_pkg <- function(pkg, why) {
  ok <- requireNamespace(pkg, quietly = TRUE)
  if (!ok) say("(skipped: package '%s' is not installed; %s)", pkg, why)
  ok
}

# The compiled Stan GLM (bench/glm.stan), or NULL with a message.
stan_glm_model <- function() {
  if (!is.null(.vbayes_bench$stan_model)) return(.vbayes_bench$stan_model)
  if (!has_pkg("rstan", "the NUTS / ADVI peers are left out")) return(NULL)
  f <- file.path(bench_dir(), "glm.stan")
  if (!file.exists(f)) {
    say("(skipped: %s not found)", f)
    return(NULL)
  }
  # VBAYES_BENCH_STAN_CACHE=file.rds keeps the compiled model between runs
  # (for developing the scripts; it is not checked against glm.stan's contents)
  cache <- Sys.getenv("VBAYES_BENCH_STAN_CACHE", "")
  if (nzchar(cache) && file.exists(cache)) {
    .vbayes_bench$stan_model <- readRDS(cache)
    return(.vbayes_bench$stan_model)
  }
  say("compiling %s once for this run ...", f)
  t <- system.time(m <- tryCatch(rstan::stan_model(f, model_name = "vbayes_bench_glm"),
                                 error = function(e) {
                                   say("(skipped: the Stan model did not compile: %s)", conditionMessage(e))
                                   NULL
                                 }))[["elapsed"]]
  if (!is.null(m)) say("compiled in %.0f s", t)
  if (!is.null(m) && nzchar(cache)) saveRDS(m, cache)
  .vbayes_bench$stan_model <- m
  m
}

# Data list for glm.stan from a design matrix and the prior of a vb() call.
# prior_type: 0 normal, 1 laplace (double_exponential with the same scale).
stan_data <- function(X, y, offset, family, prior, prior_intercept) {
  cn <- colnames(X)
  k <- ncol(X)
  is_int <- cn == "(Intercept)"
  code <- function(pr) if (pr$dist == "normal") 0L else 1L
  type <- ifelse(is_int, code(prior_intercept), code(prior))
  loc <- ifelse(is_int, prior_intercept$location, rep_len(prior$location, k))
  scale <- ifelse(is_int, prior_intercept$scale, rep_len(prior$scale, k))
  list(N = nrow(X), K = k, X = unname(X), y = as.integer(y), offset = as.double(offset),
       family = if (family == "poisson") 0L else 1L, prior_type = as.integer(type),
       loc = as.double(loc), scale = as.double(scale))
}

# NUTS (chains run one after the other, one core) -> posterior mean, sd, time
# and diagnostics.
# metric = "dense_e" adapts a dense mass matrix (much faster on the correlated
# posteriors here; used for the long reference runs).
stan_nuts <- function(model, data, chains = 4L, iter = 2000L, warmup = floor(iter / 2),
                      seed = 1L, metric = "diag_e") {
  t <- system.time(fit <- rstan::sampling(model, data = data, chains = chains, iter = iter,
                                          warmup = warmup, seed = seed, cores = 1L,
                                          refresh = 0, show_messages = FALSE,
                                          control = list(metric = metric)))[["elapsed"]]
  s <- rstan::summary(fit, pars = "beta")$summary
  sp <- rstan::get_sampler_params(fit, inc_warmup = FALSE)
  list(mean = s[, "mean"], sd = s[, "sd"], time = t,
       draws = chains * (iter - warmup),
       min_ess = min(s[, "n_eff"]), max_rhat = max(s[, "Rhat"]),
       divergent = sum(vapply(sp, function(x) sum(x[, "divergent__"]), 0)))
}

# rstan's ADVI (meanfield or fullrank) with its default settings.
stan_advi <- function(model, data, algorithm = "meanfield", seed = 1L) {
  fit <- NULL
  t <- system.time(fit <- tryCatch(
    suppressWarnings(rstan::vb(model, data = data, algorithm = algorithm, seed = seed,
                               refresh = 0)),
    error = function(e) NULL))[["elapsed"]]
  if (is.null(fit)) return(NULL)
  s <- rstan::summary(fit, pars = "beta")$summary
  list(mean = s[, "mean"], sd = s[, "sd"], time = t)
}

# ------------------------------------------------------------- accuracy --

# Per-coefficient error of an approximation (mean, sd) against a reference
# posterior (NUTS): |mean - mean_ref| / sd_ref and sd / sd_ref.
accuracy_cols <- function(mean, sd, ref) {
  list(z = abs(unname(mean) - unname(ref$mean)) / unname(ref$sd),
       r = unname(sd) / unname(ref$sd))
}

# One summary row (max and median of the per-coefficient errors).
accuracy_row <- function(label, mean, sd, ref, time) {
  a <- accuracy_cols(mean, sd, ref)
  data.frame(method = label, `max mean err (sd)` = max(a$z), `median mean err (sd)` = stats::median(a$z),
             `min sd ratio` = min(a$r), `max sd ratio` = max(a$r), `time (s)` = time,
             check.names = FALSE)
}

# ------------------------------------------------------ spike-train data --

# Raised cosines on a log-stretched time axis (Pillow et al. 2008 style):
# k bumps covering lags 0 .. nlag-1 bins; columns sum to about one.
cos_basis <- function(k, nlag, shift = 4) {
  tt <- log(seq(0, nlag - 1) + shift)
  ctr <- seq(min(tt), max(tt), length.out = k)
  w <- diff(ctr)[1]
  B <- sapply(ctr, function(c) {
    a <- (tt - c) * pi / (2 * w)
    ifelse(abs(a) < pi, 0.5 * (1 + cos(a)), 0)
  })
  B
}

# Causal filtering of x by each column of B (lag 0 in row 1): n x k.
causal_filter <- function(x, B, lag0 = TRUE) {
  L <- nrow(B)
  out <- matrix(0, length(x), ncol(B))
  for (j in seq_len(ncol(B))) {
    f <- if (lag0) B[, j] else c(0, B[, j])
    z <- stats::filter(x, f, method = "convolution", sides = 1)
    z[is.na(z)] <- 0
    out[, j] <- z
  }
  out
}

# A simulated neuron in 'dt'-second bins: a smooth stimulus through a
# 'n_stim'-function filter (lags 0-195 ms), its own spike history through an
# 'n_hist'-function filter (refractoriness, lags 5-100 ms), theta-phase
# (cos, sin), running speed and a slow drift.  p = 1 + n_stim + n_hist + 4.
# Baseline rate 'rate' Hz; rates stay within a few to ~60 Hz.
# Returns a data frame with matrix columns S, H and the vector y.
sim_neuron <- function(n, n_stim = 15L, n_hist = 10L, dt = 0.005, rate = 15,
                       sparse = FALSE, seed = 1L) {
  set.seed(seed)
  burn <- 60L
  N <- n + burn
  s <- as.numeric(stats::filter(rnorm(N), 0.9, method = "recursive")) * sqrt(1 - 0.81)
  Bs <- cos_basis(n_stim, 40L)
  Bh <- cos_basis(n_hist, 20L)
  S <- causal_filter(s, Bs)
  tsec <- seq_len(N) * dt
  theta <- 2 * pi * 8 * tsec + cumsum(rnorm(N, 0, 0.05))
  speed <- as.numeric(stats::filter(abs(rnorm(N)), rep(1 / 200, 200), sides = 1))
  speed[is.na(speed)] <- mean(speed, na.rm = TRUE)
  Z <- cbind(theta_cos = cos(theta), theta_sin = sin(theta),
             speed = (speed - mean(speed)) / stats::sd(speed),
             drift = (tsec - mean(tsec)) / stats::sd(tsec))
  # truth: a biphasic stimulus kernel, refractory history, weak slow effects
  lag <- seq(0, 39)
  kern <- 0.6 * (exp(-lag / 4) - 0.5 * exp(-lag / 10))
  b_stim <- drop(qr.solve(Bs, kern))
  b_hist <- drop(qr.solve(Bh, c(-4, -2.5, -1, -0.3, 0.2, 0.3, 0.2, 0.1, rep(0, 12))))
  b_z <- c(0.3, -0.2, 0.25, 0.1)
  if (sparse) {
    b_stim[seq(2, n_stim, 2)] <- 0
    b_z[c(2, 4)] <- 0
  }
  drive <- log(rate * dt) + S %*% b_stim + Z %*% b_z
  hk <- drop(Bh %*% b_hist)                      # history kernel, lags 1..20
  y <- integer(N)
  L <- length(hk)
  u <- runif(N)
  for (t in seq_len(N)) {
    h <- 0
    if (t > 1L) {
      m <- min(L, t - 1L)
      h <- sum(hk[seq_len(m)] * y[t - seq_len(m)])
    }
    lam <- exp(drive[t] + h)
    y[t] <- stats::qpois(u[t], lam)
  }
  H <- causal_filter(y, Bh, lag0 = FALSE)
  keep <- (burn + 1L):N
  d <- data.frame(y = y[keep])
  d$S <- S[keep, , drop = FALSE]
  d$H <- H[keep, , drop = FALSE]
  d <- cbind(d, as.data.frame(Z[keep, , drop = FALSE]))
  attr(d, "truth") <- c(log(rate), b_stim, b_hist, b_z)
  attr(d, "dt") <- dt
  d
}
