# Benchmark: vb() on a spike-train Poisson GLM against glm(), rstan NUTS and
# rstan ADVI.
#
#   Rscript bench/glm.R            (or `make bench`, which runs every script)
#
# Part 1 (speed, n = 200,000 bins of 5 ms, p = 30): time of vb(approx =
#   "fullrank") and vb(approx = "meanfield") against glm() on the same data in
#   the same run (median of VBAYES_BENCH_REPS repetitions, default 3), the ratio
#   vb / glm, and where vb's time goes: the R front end against the .Call into
#   C_glm_cavi alone, iterations, time per iteration, and an Rprof summary.
# Part 2 (accuracy, n = 5,000): vb (meanfield, fullrank) and rstan::vb
#   (meanfield ADVI) against NUTS (4 chains x 2000 iterations, dense metric): per
#   coefficient |mean - NUTS mean| / NUTS sd and sd / NUTS sd, and time.
#
# Environment: VBAYES_BENCH_N (default 200000), VBAYES_BENCH_N_SMALL (5000),
# VBAYES_BENCH_REPS (3), VBAYES_BENCH_PARTS ("speed,stan": which parts run;
# add "prototype" for an R prototype of a faster meanfield optimiser).
# VBAYES_BENCH_CALL_ONLY=fullrank (or meanfield, or 1 for both) runs only the
# .Call on the large data (fullrank 5 times, meanfield for 20 sweeps), to
# profile the C code: `VBAYES_BENCH_CALL_ONLY=fullrank perf record -g Rscript
# bench/glm.R`, then `perf report --no-children --sort dso,symbol`.
#
# The design: a neuron driven by a smooth stimulus through a 15-function
# raised-cosine filter (lags 0-195 ms, strongly correlated columns), its own
# spike history through a 10-function filter (refractoriness), theta phase
# (cos, sin), running speed and a slow drift: p = 1 + 15 + 10 + 4 = 30,
# baseline 15 Hz.  Prior: normal(0, 2.5) on coefficients, normal(0, 10) on the
# intercept, the same in Stan.

local({
  here <- if (exists("bench_dir", mode = "function")) bench_dir() else {
    a <- grep("^--file=", commandArgs(FALSE), value = TRUE)
    if (length(a)) dirname(normalizePath(sub("^--file=", "", a[1]))) else "bench"
  }
  if (!exists("md_table", mode = "function")) source(file.path(here, "common.R"))
})

env_int <- function(name, default) {
  v <- Sys.getenv(name, "")
  if (nzchar(v)) as.integer(v) else as.integer(default)
}
n_big <- env_int("VBAYES_BENCH_N", 200000)
n_small <- env_int("VBAYES_BENCH_N_SMALL", 5000)
reps <- env_int("VBAYES_BENCH_REPS", 3)
call_only <- Sys.getenv("VBAYES_BENCH_CALL_ONLY", "")
call_only <- if (call_only %in% c("fullrank", "meanfield")) call_only else
  if (call_only == "1") c("fullrank", "meanfield") else character(0)
parts <- strsplit(Sys.getenv("VBAYES_BENCH_PARTS", "speed,stan"), ",")[[1]]
# NUTS with a dense mass matrix: with rstan's default diagonal one, the 15
# strongly correlated stimulus-filter coefficients make NUTS hit its maximum
# tree depth (281 s for n = 1,000; not finished after 30+ min for n = 5,000 on
# the machine of RESULTS.md).  VBAYES_BENCH_NUTS_METRIC=diag_e for the default.
nuts_metric <- Sys.getenv("VBAYES_BENCH_NUTS_METRIC", "dense_e")
dt <- 0.005
pr <- normal(0, 2.5)
pr_int <- normal(0, 10)
ctl <- vb_control(quiet = TRUE)
fml <- y ~ S + H + theta_cos + theta_sin + speed + drift

# The pieces of vb_fit() up to the .Call, so the C engine can be timed alone.
# Internal functions: if they change, this part is skipped with a message.
cavi_inputs <- function(X, y, offset, family, approx, assign) {
  pa <- vbayes:::prior_arrays(colnames(X), pr, pr_int)
  model <- vbayes:::glm_model(X, y, rep(1, length(y)), offset, family, pa, gamma_prior(1, 1), ctl)
  list(model = model, init = vbayes:::glm_init(model, colnames(X)),
       blocks = vbayes:::make_blocks(approx, colnames(X), assign, NULL),
       control = vb_control(maxit = ctl$maxit, tol = ctl$tol, quiet = TRUE,
                            joint_means = 0L))  # joint mean step off (pure coordinate sweeps)
}
cavi_call <- function(inp, maxit = NULL) {
  cc <- inp$control
  if (!is.null(maxit)) cc$maxit <- as.integer(maxit)
  .Call(vbayes:::C_glm_cavi, inp$model, inp$init, inp$blocks, cc)
}

cat("\n## Spike-train Poisson GLM (bench/glm.R)\n\n")
if ("speed" %in% parts || length(call_only)) {
say("simulating %d bins of %g s ...", n_big, dt)
d <- sim_neuron(n_big, dt = dt, seed = 1)
X <- model.matrix(fml, d)
off <- rep(log(dt), n_big)

if (length(call_only)) {
  for (approx in call_only) {
    inp <- cavi_inputs(X, d$y, off, poisson(), approx, attr(X, "assign"))
    k <- if (approx == "fullrank") 5L else 1L
    t <- system.time(for (i in seq_len(k)) r <- cavi_call(inp, if (approx == "meanfield") 20L))
    say("%s: %d call(s) in %.2f s, %d iterations each", approx, k, t[["elapsed"]], r$iterations)
  }
  quit(save = "no")
}

say("n = %d bins (%.0f s of recording), p = %d, %d spikes (mean rate %.1f Hz), kappa(X) = %.0f",
    n_big, n_big * dt, ncol(X), sum(d$y), mean(d$y) / dt, kappa(X))

# ------------------------------------------------------------ part 1: speed --
section(sprintf("Speed: n = %d, p = %d (median of %d runs, elapsed seconds)", n_big, ncol(X), reps))

t_glm <- time_median(function() glm(fml, data = d, family = poisson(), offset = rep(log(dt), n_big)), reps)
g <- attr(t_glm, "value")
t_glmfit <- time_median(function() glm.fit(X, d$y, family = poisson(), offset = off), reps)

t_fr <- time_median(function() vb(fml, data = d, family = poisson(), exposure = dt, prior = pr,
                                  prior_intercept = pr_int, approx = "fullrank", control = ctl), reps)
fr <- attr(t_fr, "value")
# meanfield can be slow on this correlated design: repeat it only if it is quick
mf_reps <- reps
t_mf1 <- system.time(mf <- vb(fml, data = d, family = poisson(), exposure = dt, prior = pr,
                              prior_intercept = pr_int, approx = "meanfield", control = ctl))[["elapsed"]]
t_mf <- if (t_mf1 > 20 || reps < 2) { mf_reps <- 1L; t_mf1 } else {
  tm <- time_median(function() vb(fml, data = d, family = poisson(), exposure = dt, prior = pr,
                                  prior_intercept = pr_int, approx = "meanfield", control = ctl), reps - 1L)
  stats::median(c(t_mf1, attr(tm, "times")))
}
t_frfit <- time_median(function() vb_fit(X, d$y, family = poisson(), offset = off, prior = pr,
                                         prior_intercept = pr_int, approx = "fullrank", control = ctl,
                                         assign = attr(X, "assign")), reps)

# the .Call alone
t_call <- tryCatch({
  inp_fr <- cavi_inputs(X, d$y, off, poisson(), "fullrank", attr(X, "assign"))
  tc <- time_median(function() cavi_call(inp_fr), reps)
  inp_mf <- cavi_inputs(X, d$y, off, poisson(), "meanfield", attr(X, "assign"))
  # meanfield per-sweep cost from 10 sweeps
  tm <- system.time(r10 <- cavi_call(inp_mf, 10L))[["elapsed"]]
  list(fr = tc, fr_iter = attr(tc, "value")$iterations, mf_sweep = tm / r10$iterations)
}, error = function(e) {
  say("(the .Call-alone timing is skipped: %s)", conditionMessage(e))
  NULL
})

tab <- data.frame(
  fit = c("glm()", "glm.fit() (matrix)", "vb(approx = \"fullrank\")", "vb_fit(approx = \"fullrank\") (matrix)",
          "vb(approx = \"meanfield\")"),
  `time (s)` = c(t_glm, t_glmfit, t_fr, t_frfit, t_mf),
  runs = c(reps, reps, reps, reps, mf_reps),
  `ratio to glm()` = c(1, t_glmfit / t_glm, t_fr / t_glm, t_frfit / t_glm, t_mf / t_glm),
  iterations = c(g$iter, NA, fr$iterations, NA, mf$iterations),
  converged = c(g$converged, NA, fr$converged, NA, mf$converged),
  check.names = FALSE)
print_md(tab)

# where the time goes
section("Where vb()'s time goes (fullrank unless stated)")
t_mm <- time_median(function() model.matrix(fml, model.frame(fml, d)), reps)
t_qr <- time_median(function() vbayes:::design_rank(X), reps)
rows <- data.frame(step = c("model.frame + model.matrix (shared with glm())",
                            "design rank inside vb_fit() (rank note; pivoted Cholesky of X'X)"),
                   `time (s)` = c(t_mm, t_qr), check.names = FALSE)
if (!is.null(t_call)) {
  rows <- rbind(rows, data.frame(
    step = c(sprintf(".Call(C_glm_cavi) alone, fullrank (%d iterations)", t_call$fr_iter),
             "  per fullrank iteration",
             "R front end and post-processing (vb() minus .Call)",
             "meanfield: one coordinate sweep of .Call(C_glm_cavi) (30 blocks, joint mean step off)"),
    `time (s)` = c(t_call$fr, t_call$fr / t_call$fr_iter, t_fr - t_call$fr, t_call$mf_sweep),
    check.names = FALSE))
}
print_md(rows)
say("meanfield: %d sweeps, converged = %s, ELBO %.2f (fullrank %.2f)",
    mf$iterations, mf$converged, mf$elbo, fr$elbo)

# Rprof of one fullrank vb() call: top functions by total time
prof <- tempfile(fileext = ".out")
Rprof(prof, interval = 0.01)
invisible(vb(fml, data = d, family = poisson(), exposure = dt, prior = pr, prior_intercept = pr_int,
             approx = "fullrank", control = ctl))
Rprof(NULL)
sp <- summaryRprof(prof)$by.total
sp <- sp[!rownames(sp) %in% c("\"vb\"", "\"local\"", "\"eval\"", "\"source\"", "\"withVisible\"",
                              "\"sys.source\"", "\"doTryCatch\"", "\"tryCatch\"", "\"tryCatchList\"",
                              "\"tryCatchOne\""), , drop = FALSE]
say("Rprof of one vb(approx = \"fullrank\") call (by total time, top 10):\n")
print_md(data.frame(`function` = gsub("\"", "", rownames(sp))[1:min(10, nrow(sp))],
                    `total (s)` = sp$total.time[1:min(10, nrow(sp))],
                    `share (%)` = sp$total.pct[1:min(10, nrow(sp))], check.names = FALSE))
unlink(prof)

# agreement with glm() at this n (wide data, flat-ish prior)
se <- sqrt(diag(vcov(g)))
z_fr <- abs(coef(fr) - coef(g)) / se
z_mf <- abs(coef(mf) - coef(g)) / se
print_md(data.frame(
  fit = c("vb fullrank", "vb meanfield"),
  `max |mean - glm| / se` = c(max(z_fr), max(z_mf)),
  `min sd / se` = c(min(sqrt(diag(vcov(fr))) / se), min(sqrt(diag(vcov(mf))) / se)),
  `max sd / se` = c(max(sqrt(diag(vcov(fr))) / se), max(sqrt(diag(vcov(mf))) / se)),
  check.names = FALSE))
rm(g, fr, mf)
if (!"prototype" %in% parts) rm(d, X, off)
invisible(gc(FALSE))
}

# ------------------------------------ prototype: a faster meanfield optimiser --
# Opt-in (VBAYES_BENCH_PARTS=prototype, needs the speed part's data): the
# meanfield family restricts Sigma to a diagonal, not the order in which mu is
# updated.  Here mu takes damped Newton steps with the dense Hessian
# X' diag(lambda) X + S0^-1 (cost n p^2, like one fullrank iteration) and the
# variances their fixed point s2_j = 1 / (sum_t x_tj^2 lambda_t + 1 / b_j^2),
# lambda_t = exp(m_t + v_t / 2).  Plain R, to show what src/glm.c could gain.
if ("prototype" %in% parts) {
  section("Prototype (R): meanfield with joint Newton steps on the mean")
  mf_newton <- function(X, y, off, b, tol = ctl$tol, maxit = 200L) {
    p <- ncol(X); X2 <- X^2
    mu <- c(log(sum(y) / sum(exp(off))), rep(0, p - 1))
    s2 <- 1 / (drop(crossprod(X2, exp(drop(off + X %*% mu)))) + 1 / b^2)
    lg <- sum(lgamma(y + 1))
    elbo <- function(mu, s2) {
      m <- drop(off + X %*% mu); v <- drop(X2 %*% s2)
      sum(y * m - exp(m + v / 2)) - lg - sum((mu^2 + s2) / (2 * b^2)) - sum(log(b)) +
        0.5 * sum(log(s2)) + p / 2
    }
    e_old <- elbo(mu, s2)
    for (it in seq_len(maxit)) {
      m <- drop(off + X %*% mu); v <- drop(X2 %*% s2); lam <- exp(m + v / 2)
      step <- drop(solve(crossprod(X * sqrt(lam)) + diag(1 / b^2), crossprod(X, y - lam) - mu / b^2))
      a <- 1
      repeat {
        e <- elbo(mu + a * step, s2)
        if (e >= e_old || a < 1e-6) break
        a <- a / 2
      }
      mu <- mu + a * step
      lam <- exp(drop(off + X %*% mu) + drop(X2 %*% s2) / 2)
      s2 <- 1 / (drop(crossprod(X2, lam)) + 1 / b^2)
      e <- elbo(mu, s2)
      done <- abs(e - e_old) <= tol * (abs(e) + tol)
      e_old <- e
      if (done) break
    }
    list(mu = mu, s2 = s2, elbo = e_old, iterations = it)
  }
  if (!exists("d", inherits = FALSE) || !exists("X", inherits = FALSE)) {
    d <- sim_neuron(n_big, dt = dt, seed = 1)
    X <- model.matrix(fml, d)
    off <- rep(log(dt), n_big)
  }
  b <- ifelse(colnames(X) == "(Intercept)", pr_int$scale, pr$scale)
  t_pr <- time_median(function() mf_newton(X, d$y, off, b), reps)
  pm <- attr(t_pr, "value")
  t_fr2 <- time_median(function() vb(fml, data = d, family = poisson(), exposure = dt, prior = pr,
                                     prior_intercept = pr_int, approx = "fullrank", control = ctl), reps)
  fr2 <- attr(t_fr2, "value")
  z <- abs(pm$mu - coef(fr2)) / sqrt(diag(vcov(fr2)))
  print_md(data.frame(
    fit = c("prototype meanfield, joint Newton on mu (R)", "vb(approx = \"fullrank\")"),
    `time (s)` = c(t_pr, t_fr2), iterations = c(pm$iterations, fr2$iterations),
    ELBO = sprintf("%.3f", c(pm$elbo, fr2$elbo)), check.names = FALSE))
  say("prototype meanfield means vs fullrank means: max |difference| = %.3f fullrank sd", max(z))
}

# --------------------------------------------------- part 2: against Stan --
if ("stan" %in% parts) {
section(sprintf("Accuracy and time against rstan on n = %d (same design, p = 30)", n_small))
ds <- sim_neuron(n_small, dt = dt, seed = 2)
Xs <- model.matrix(fml, ds)
say("n = %d bins, %d spikes", n_small, sum(ds$y))
fit_small <- function(approx, maxit = ctl$maxit)
  vb(fml, data = ds, family = poisson(), exposure = dt, prior = pr, prior_intercept = pr_int,
     approx = approx, control = vb_control(quiet = TRUE, maxit = maxit))
t_vfr <- time_median(function() fit_small("fullrank"), reps)
t_vmf <- time_median(function() suppressWarnings(fit_small("meanfield")), reps)
vfr <- attr(t_vfr, "value")
vmf <- attr(t_vmf, "value")
# meanfield CAVI run until it converges, to separate the family's error from
# the optimiser's (coordinate ascent is slow on correlated columns)
t_vmf2 <- if (vmf$converged) t_vmf else
  system.time(vmf2 <- suppressWarnings(fit_small("meanfield", 50000L)))[["elapsed"]]
if (vmf$converged) vmf2 <- vmf
t_g5 <- time_median(function() glm(fml, data = ds, family = poisson(), offset = rep(log(dt), n_small)), reps)

vb_rows <- function(ref) {
  r <- rbind(
    accuracy_row("vbayes fullrank", coef(vfr), sqrt(diag(vcov(vfr))), ref, t_vfr),
    accuracy_row("vbayes meanfield (default maxit = 500)", coef(vmf), sqrt(diag(vcov(vmf))), ref, t_vmf),
    accuracy_row("vbayes meanfield (maxit = 50000)", coef(vmf2), sqrt(diag(vcov(vmf2))), ref, t_vmf2))
  r$iterations <- c(vfr$iterations, vmf$iterations, vmf2$iterations)
  r$converged <- c(vfr$converged, vmf$converged, vmf2$converged)
  if (vmf$converged) r <- r[-3, ]  # the long run only when the default one stopped short
  r
}
sm <- stan_glm_model()
if (!is.null(sm)) {
  sd_ <- stan_data(Xs, ds$y, rep(log(dt), n_small), "poisson", pr, pr_int)
  nuts <- stan_nuts(sm, sd_, chains = 4L, iter = 2000L, seed = 1L, metric = nuts_metric)
  say("NUTS (metric %s): %d draws, min ESS %.0f, max Rhat %.3f, %d divergent transitions",
      nuts_metric, nuts$draws, nuts$min_ess, nuts$max_rhat, nuts$divergent)
  advi <- stan_advi(sm, sd_, "meanfield", seed = 1L)
  none <- function(label, time) data.frame(method = label, `max mean err (sd)` = NA,
    `median mean err (sd)` = NA, `min sd ratio` = NA, `max sd ratio` = NA, `time (s)` = time,
    iterations = NA, converged = NA, check.names = FALSE)
  rows <- rbind(
    vb_rows(nuts),
    if (!is.null(advi)) cbind(accuracy_row("rstan::vb meanfield (ADVI, defaults)", advi$mean, advi$sd, nuts, advi$time),
                              iterations = NA, converged = NA),
    none(sprintf("rstan NUTS (4 chains x 2000, one after another, %s)", nuts_metric), nuts$time),
    none("glm() (point estimate only)", t_g5))
  rows$`time / NUTS` <- rows$`time (s)` / nuts$time
  print_md(rows)
  say("Errors per coefficient: |mean - NUTS mean| / NUTS sd and sd / NUTS sd; max, median and range over the %d coefficients.", ncol(Xs))
  say("Stan compile time excluded. NUTS Monte Carlo error on a mean: about %.3f NUTS sd (min ESS %.0f).",
      1 / sqrt(nuts$min_ess), nuts$min_ess)
  a_fr <- accuracy_cols(coef(vfr), sqrt(diag(vcov(vfr))), nuts)
  a_mf <- accuracy_cols(coef(vmf), sqrt(diag(vcov(vmf))), nuts)
  a_mf2 <- accuracy_cols(coef(vmf2), sqrt(diag(vcov(vmf2))), nuts)
  det <- data.frame(coefficient = names(coef(vfr)), `NUTS mean` = unname(nuts$mean), `NUTS sd` = unname(nuts$sd),
                    `fullrank err` = a_fr$z, `fullrank sd ratio` = a_fr$r,
                    `meanfield err` = a_mf$z, `meanfield (conv.) err` = a_mf2$z,
                    `meanfield (conv.) sd ratio` = a_mf2$r, check.names = FALSE)
  if (!is.null(advi)) {
    a_ad <- accuracy_cols(advi$mean, advi$sd, nuts)
    det$`ADVI err` <- a_ad$z
    det$`ADVI sd ratio` <- a_ad$r
  }
  say("\nPer coefficient (err = |mean - NUTS mean| / NUTS sd):\n")
  print_md(det, 2)
} else {
  r <- data.frame(method = c("vbayes fullrank", "vbayes meanfield (maxit = 500)",
                             "vbayes meanfield (maxit = 50000)", "glm()"),
                  `time (s)` = c(t_vfr, t_vmf, t_vmf2, t_g5),
                  iterations = c(vfr$iterations, vmf$iterations, vmf2$iterations, NA), check.names = FALSE)
  print_md(r)
}
}
