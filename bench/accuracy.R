# Accuracy benchmark: vb() against long NUTS runs (rstan) on three posteriors.
#
#   Rscript bench/accuracy.R       (or `make bench`)
#
# 1. Poisson GLM, normal prior: a simulated neuron (2,000 bins of 10 ms; a
#    6-function stimulus filter, a 4-function spike-history filter, theta phase,
#    running speed, drift: p = 15), normal(0, 2.5), intercept normal(0, 10).
# 2. The same design with a sparse truth and a laplace(0, 0.5) prior
#    (Stan: double_exponential(0, 0.5), the same density).
# 3. Logistic regression on MASS::Pima.tr (200 women, 7 standardised
#    predictors), normal(0, 2.5), intercept normal(0, 10).
#
# For approx = meanfield, block and fullrank: per coefficient
# |VB mean - NUTS mean| / NUTS sd and VB sd / NUTS sd, and the time ratio
# VB / NUTS.  Blocks: one per formula term for the neuron (stimulus filter,
# history filter, each slow covariate); for Pima, where every predictor is its
# own term, the grouping {intercept}, {npreg, age, ped}, {glu, bp, skin, bmi}.
# NUTS: 4 chains x (1000 warmup + VBAYES_BENCH_NUTS_DRAWS, default 5000)
# draws, one chain after another, with a dense mass matrix (metric = "dense_e":
# the correlated filter coefficients make the default diagonal metric many
# times slower, and this is a reference run, not a timing of defaults).  rstan's ADVI (meanfield and fullrank,
# defaults) is shown in the summary as the other variational peer.
# Without rstan only the VB fits are timed.

local({
  here <- if (exists("bench_dir", mode = "function")) bench_dir() else {
    a <- grep("^--file=", commandArgs(FALSE), value = TRUE)
    if (length(a)) dirname(normalizePath(sub("^--file=", "", a[1]))) else "bench"
  }
  if (!exists("md_table", mode = "function")) source(file.path(here, "common.R"))
})

nuts_draws <- local({
  v <- Sys.getenv("VBAYES_BENCH_NUTS_DRAWS", "")
  if (nzchar(v)) as.integer(v) else 5000L
})
reps <- local({
  v <- Sys.getenv("VBAYES_BENCH_REPS", "")
  if (nzchar(v)) as.integer(v) else 3L
})
approxes <- c("meanfield", "block", "fullrank")

# ------------------------------------------------------------ the problems --
problems <- list()

dn <- sim_neuron(2000, n_stim = 6L, n_hist = 4L, dt = 0.01, rate = 10, seed = 11)
problems$poisson_normal <- list(
  title = "Poisson GLM, normal(0, 2.5) prior (simulated neuron, n = 2000, p = 15)",
  formula = y ~ S + H + theta_cos + theta_sin + speed + drift, data = dn,
  family = poisson(), exposure = 0.01, prior = normal(0, 2.5), prior_intercept = normal(0, 10),
  blocks = NULL)

ds <- sim_neuron(2000, n_stim = 6L, n_hist = 4L, dt = 0.01, rate = 10, sparse = TRUE, seed = 12)
problems$poisson_laplace <- list(
  title = "Poisson GLM, laplace(0, 0.5) prior (sparse truth, n = 2000, p = 15)",
  formula = y ~ S + H + theta_cos + theta_sin + speed + drift, data = ds,
  family = poisson(), exposure = 0.01, prior = laplace(0, 0.5), prior_intercept = normal(0, 10),
  blocks = NULL)

if (has_pkg("MASS", "the Pima logistic problem is left out")) {
  pima <- MASS::Pima.tr
  preds <- c("npreg", "glu", "bp", "skin", "bmi", "ped", "age")
  pima[preds] <- lapply(pima[preds], function(x) (x - mean(x)) / stats::sd(x))
  problems$pima_logistic <- list(
    title = "Logistic regression, MASS::Pima.tr (n = 200, p = 8, standardised), normal(0, 2.5) prior",
    formula = type ~ npreg + glu + bp + skin + bmi + ped + age, data = pima,
    family = binomial(), exposure = NULL, prior = normal(0, 2.5), prior_intercept = normal(0, 10),
    blocks = list("(Intercept)", c("npreg", "age", "ped"), c("glu", "bp", "skin", "bmi")))
}

fit_vb <- function(pb, approx, maxit = 500L) {
  args <- list(pb$formula, data = pb$data, family = pb$family, prior = pb$prior,
               prior_intercept = pb$prior_intercept, approx = approx,
               control = vb_control(quiet = TRUE, maxit = maxit, blocks = pb$blocks))
  if (!is.null(pb$exposure)) args$exposure <- pb$exposure
  suppressWarnings(do.call(vb, args))
}

cat("\n## Accuracy against long NUTS runs (bench/accuracy.R)\n")
sm <- stan_glm_model()
summary_rows <- list()

for (nm in names(problems)) {
  pb <- problems[[nm]]
  section(pb$title)
  fits <- list(); times <- numeric(0)
  for (a in approxes) {
    tm <- time_median(function() fit_vb(pb, a), reps)
    fits[[a]] <- attr(tm, "value")
    times[a] <- tm
    if (!fits[[a]]$converged) {
      # the default budget was not enough: also run to convergence
      tm2 <- system.time(f2 <- fit_vb(pb, a, 50000L))[["elapsed"]]
      lab <- paste0(a, " (maxit = 50000)")
      fits[[lab]] <- f2
      times[lab] <- tm2
    }
  }
  X <- fits$fullrank$x
  vb_info <- data.frame(approx = names(fits), ELBO = sprintf("%.2f", vapply(fits, elbo, 0)),
                        iterations = vapply(fits, function(f) f$iterations, 0L),
                        converged = vapply(fits, function(f) f$converged, NA),
                        `time (s)` = unname(times), check.names = FALSE)
  if (is.null(sm)) {
    print_md(vb_info)
    next
  }
  fam <- pb$family$family
  y <- if (fam == "binomial") fits$fullrank$y else pb$data$y
  sdat <- stan_data(X, y, fits$fullrank$offset, fam, pb$prior, pb$prior_intercept)
  nuts <- stan_nuts(sm, sdat, chains = 4L, iter = 1000L + nuts_draws, warmup = 1000L, seed = 1L,
                    metric = "dense_e")
  say("NUTS (dense metric): 4 chains x %d draws after 1000 warmup, %.1f s; min ESS %.0f (MC error of a mean about %.3f sd), max Rhat %.3f, %d divergent",
      nuts_draws, nuts$time, nuts$min_ess, 1 / sqrt(nuts$min_ess), nuts$max_rhat, nuts$divergent)
  advi <- list(meanfield = stan_advi(sm, sdat, "meanfield", seed = 1L),
               fullrank = stan_advi(sm, sdat, "fullrank", seed = 1L))

  # per-coefficient table
  det <- data.frame(coefficient = colnames(X), `NUTS mean` = unname(nuts$mean),
                    `NUTS sd` = unname(nuts$sd), check.names = FALSE)
  for (a in names(fits)) {
    ac <- accuracy_cols(coef(fits[[a]]), sqrt(diag(vcov(fits[[a]]))), nuts)
    det[[paste(a, "err")]] <- ac$z
    det[[paste(a, "sd ratio")]] <- ac$r
  }
  say("Per coefficient: err = |VB mean - NUTS mean| / NUTS sd; sd ratio = VB sd / NUTS sd.\n")
  print_md(det, 2)

  rows <- do.call(rbind, lapply(names(fits), function(a)
    accuracy_row(paste("vbayes", a), coef(fits[[a]]), sqrt(diag(vcov(fits[[a]]))), nuts, times[[a]])))
  for (a in names(advi)) if (!is.null(advi[[a]]))
    rows <- rbind(rows, accuracy_row(paste("rstan::vb", a, "(ADVI)"), advi[[a]]$mean, advi[[a]]$sd,
                                     nuts, advi[[a]]$time))
  rows$`time / NUTS` <- rows$`time (s)` / nuts$time
  print_md(rows)
  print_md(vb_info)
  summary_rows[[nm]] <- cbind(problem = nm, rows)
}

if (length(summary_rows)) {
  section("Summary (goal for fullrank: mean error <= 0.05 sd, sd ratio in 0.95-1.05)")
  print_md(do.call(rbind, summary_rows))
}
