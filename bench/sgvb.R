# Benchmark: SGVB (vb(method = "sgvb")) against Stan's ADVI (rstan::vb) on a
# Poisson GLM with n = 200,000 and p = 30.  Reports gradient evaluations,
# seconds, and the ELBO gap to the CAVI optimum of the same family, every
# ELBO computed in closed form at the returned q (mean and covariance).
#
# Run: R_LIBS=<lib with vbayes> Rscript bench/sgvb.R [quick]
# rstan is optional (Debian: apt-get install r-cran-rstan); without it only
# vbayes is timed.  Results: bench/RESULTS.md, section 5.
#
# Rscript bench/sgvb.R cost  (issue 18; a few minutes; no rstan) instead
# measures (1) the engine's cost per step against d = 10, 50, 100, 200 on a
# Gaussian target evaluated in C (f = -1/2 theta' A theta, one dsymv), at a
# fixed step size and step count (CPU seconds), fullrank (with the whitening
# preconditioner, as vb_density() and the GLMs run it) and meanfield
# (with and without one), with the target's own cost measured apart; and
# (2) vb(method = "sgvb") against CAVI on the same GLMs (Poisson and
# logistic, n = 20,000, p = 20), medians of 3 runs ("nostep" or
# "noglm" skip one of the two).  Run it with
# two libraries (before / after) to compare.  Results:
# bench/RESULTS-density.md (per step) and bench/RESULTS-sgvb.md (GLMs).
suppressPackageStartupMessages(library(vbayes))
args <- commandArgs(TRUE)
quick <- "quick" %in% args
if ("cost" %in% args) {
  cat(sprintf("vbayes from %s; nproc %s; %s\n", find.package("vbayes"), parallel::detectCores(),
              paste(system("uptime", intern = TRUE), collapse = "")))
  # CPU seconds of this process (user + system): on a machine shared by
  # several jobs the elapsed time measures the load, not the code
  cpu <- function(expr) { t <- system.time(expr); t[["user.self"]] + t[["sys.self"]] }
  steps <- 2000L
  ctl <- vb_control(quiet = TRUE, step_size = 0.01, sgvb_maxit = steps, elbo_samples = 2L,
                    precision = 1e-12)
  for (d in if (!("nostep" %in% args)) c(10L, 50L, 100L, 200L)) {
    set.seed(d)
    B <- matrix(rnorm(d * d), d) / sqrt(d)
    A <- crossprod(B) + diag(d)
    Lp <- t(chol(chol2inv(chol(A))))
    tgt <- list(type = "gauss", m = rep(0, d), A = A)
    # the target alone: S = 1 gradients at fixed q (C_sgvb_grad also draws)
    for (cfg in list(list("fullrank", TRUE), list("meanfield", TRUE), list("meanfield", FALSE))) {
      ap <- cfg[[1]]; pre <- if (cfg[[2]]) Lp else NULL
      L0 <- if (ap == "fullrank") Lp else diag(sqrt(diag(Lp %*% t(Lp))), d)
      opts <- list(fullrank = ap == "fullrank", score = FALSE, samples = 1L, final_elbo = FALSE)
      tm <- median(vapply(1:3, function(i) cpu(
        r <<- .Call(vbayes:::C_sgvb_fit, tgt, rep(0.1, d), L0, pre, ctl, opts)), 0))
      tg <- median(vapply(1:3, function(i) cpu(
        .Call(vbayes:::C_sgvb_grad, tgt, rep(0.1, d), L0,
              list(fullrank = ap == "fullrank", score = FALSE, samples = 1L, nrep = steps,
                   baseline = TRUE, stl = TRUE))), 0))
      cat(sprintf("per-step | d %4d | %-9s | pre %-5s | %8.1f us CPU per step | %8.1f us per gradient estimate at fixed q | %d steps\n",
                  d, ap, cfg[[2]], 1e6 * tm / r$iterations, 1e6 * tg / steps, r$iterations))
    }
  }
  for (n in if (!("noglm" %in% args)) 20000L) for (fam in c("poisson", "binomial")) {
    set.seed(n)
    p <- 20L
    X <- cbind(1, matrix(rnorm(n * (p - 1L)), n) / sqrt(p - 1L))
    b <- c(-1, rnorm(p - 1L, 0, 0.5))
    eta <- drop(X %*% b)
    y <- if (fam == "poisson") rpois(n, exp(eta)) else rbinom(n, 1, plogis(eta))
    fm <- get(fam)()
    for (ap in c("fullrank", "meanfield")) {
      nrep <- if ("reps5" %in% args) 5L else 3L
      tc <- median(vapply(seq_len(nrep), function(i) cpu(
        fc <<- vb_fit(X, y, family = fm, approx = ap, control = vb_control(quiet = TRUE))), 0))
      ts <- median(vapply(seq_len(nrep), function(i) { set.seed(i); cpu(
        fs <<- vb_fit(X, y, family = fm, approx = ap, method = "sgvb",
                      control = vb_control(quiet = TRUE))) }, 0))
      sd0 <- sqrt(diag(vcov(fc)))
      cat(sprintf("glm | %-8s | n %6d | p %d | %-9s | CAVI %.3f s CPU | SGVB %.3f s CPU | ratio %.2f | SGVB steps %d, gradients %g | ELBO gap %.4f nat | max mean err %.4f sd | max sd err %.4f | converged %s\n",
                  fam, n, p, ap, tc, ts, ts / tc, fs$iterations, fs$sgvb$n_grad, elbo(fc) - elbo(fs),
                  max(abs(coef(fs) - coef(fc)) / sd0), max(abs(sqrt(diag(vcov(fs))) / sd0 - 1)),
                  fs$converged))
    }
  }
  cat(paste(system("uptime", intern = TRUE), collapse = ""), "\n")
  quit(save = "no")
}
set.seed(20261124)
n <- if (quick) 20000L else 200000L
p <- 30L
X <- cbind(1, matrix(rnorm(n * (p - 1L)), n) / sqrt(p - 1L))
colnames(X) <- c("(Intercept)", paste0("x", seq_len(p - 1L)))
beta <- c(-1, rnorm(p - 1L, 0, 0.5))
y <- rpois(n, exp(drop(X %*% beta)))
cat(sprintf("Poisson GLM: n = %d, p = %d, %d events\n", n, p, sum(y)))

rows <- list()
add <- function(method, approx, grads, secs, elbo, cavi) {
  rows[[length(rows) + 1L]] <<- data.frame(method = method, approx = approx, grad_evals = grads,
                                           seconds = round(secs, 2), elbo = round(elbo, 3),
                                           gap_to_cavi = signif(cavi - elbo, 3))
  print(rows[[length(rows)]], row.names = FALSE)
  utils::flush.console()
}

quiet <- vb_control(quiet = TRUE)
cavi <- list()
for (ap in c("meanfield", "fullrank")) {
  t <- system.time(f <- vb_fit(X, y, family = poisson(), approx = ap, control = quiet))[["elapsed"]]
  cavi[[ap]] <- f
  add("vbayes CAVI", ap, NA, t, elbo(f), elbo(f))
}
model <- vbayes:::fit_model(cavi$fullrank)
elbo_at <- function(mu, Sigma) .Call(vbayes:::C_glm_elbo, model, mu, Sigma, c(1, 1))$elbo

for (ap in c("meanfield", "fullrank")) {
  set.seed(1)
  t <- system.time(f <- vb_fit(X, y, family = poisson(), approx = ap, method = "sgvb",
                               control = quiet))[["elapsed"]]
  # the curvature used for the start and the preconditioner costs about p/2
  # gradient evaluations (one X'WX); it is included in the seconds
  add("vbayes SGVB", ap, f$sgvb$n_grad, t, elbo(f), elbo(cavi[[ap]]))
}

# how soon SGVB is within 0.1 nat: the same run cut at increasing step caps
# (the returned q is the current Polyak average or iterate)
for (ap in c("meanfield", "fullrank")) for (cap in c(300L, 600L, 1000L)) {
  set.seed(1)
  t <- system.time(f <- suppressWarnings(vb_fit(X, y, family = poisson(), approx = ap,
    method = "sgvb", control = vb_control(quiet = TRUE, sgvb_maxit = cap))))[["elapsed"]]
  add(sprintf("vbayes SGVB, cut at %d steps", cap), ap, f$sgvb$n_grad, t, elbo(f), elbo(cavi[[ap]]))
}

if (requireNamespace("rstan", quietly = TRUE)) {
  code <- "
  data { int<lower=1> n; int<lower=1> p; matrix[n, p] X; int<lower=0> y[n]; }
  parameters { vector[p] beta; }
  model {
    beta[1] ~ normal(0, 10);
    beta[2:p] ~ normal(0, 1);
    y ~ poisson_log(X * beta);
  }"
  tc <- system.time(sm <- rstan::stan_model(model_code = code, verbose = FALSE))[["elapsed"]]
  cat(sprintf("Stan model compiled in %.0f s (not counted)\n", tc))
  dat <- list(n = n, p = p, X = X, y = y)
  settings <- if (quick) list(c(0.01, 10000)) else list(c(0.01, 10000), c(0.001, 10000))
  # the last two runs start ADVI at the posterior mode SGVB starts from
  mode <- vbayes:::laplace_start(model, vbayes:::glm_init(model, colnames(X)), p, FALSE)$mu
  runs <- c(lapply(settings, function(st) list(tol = st[1], iter = st[2], init = "random")),
            list(list(tol = 0.001, iter = 10000, init = list(beta = mode))))
  for (ap in c("meanfield", "fullrank")) for (st in runs) {
    out <- NULL
    t <- system.time(out <- utils::capture.output(
      fit <- rstan::vb(sm, data = dat, algorithm = ap, tol_rel_obj = st$tol, iter = st$iter,
                       output_samples = 10000, seed = 1, refresh = 100, init = st$init)))[["elapsed"]]
    dr <- as.matrix(fit, pars = "beta")
    mu <- colMeans(dr)
    Sig <- if (ap == "meanfield") diag(apply(dr, 2, var)) else cov(dr)
    # iterations run: the last progress line of the stochastic ascent plus
    # the last step-size adaptation iteration printed (50 per eta tried)
    asc <- grep("^Chain 1:\\s+[0-9]+\\s+-?[0-9.e+]+\\s", out, value = TRUE)
    nit <- max(as.integer(sub("^Chain 1:\\s+([0-9]+)\\s.*", "\\1", asc)))
    ad <- grep("Iteration:\\s+[0-9]+ / [0-9]+ .*Adaptation", out, value = TRUE)
    nadapt <- if (length(ad)) max(as.integer(sub(".*Iteration:\\s+([0-9]+) /.*", "\\1", ad))) else 0L
    add(sprintf("rstan::vb (tol_rel_obj %g%s)", st$tol, if (is.list(st$init)) ", from the mode" else ""),
        ap, nit + nadapt, t, elbo_at(mu, Sig),
        elbo(cavi[[ap]]))
  }
} else cat("rstan not installed: ADVI rows skipped\n")

res <- do.call(rbind, rows)
print(res, row.names = FALSE)
invisible(res)
