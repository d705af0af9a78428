# Benchmark: hierarchical GLMs, vb() with random effects, against lme4
# (lmer/glmer), vglmer (CAVI with Polya-Gamma, "strong" = meanfield and
# "weak" = joint factorizations) and NUTS (rstan, bench/glmm.stan, the same
# model and priors).
#
#   Rscript bench/glmm.R
#
# Part 1 (accuracy and time on lme4's data): sleepstudy (gaussian,
#   Reaction ~ Days + (Days | Subject)), cbpp (binomial, (1 | herd)),
#   grouseticks (poisson, (1 | BROOD) + (1 | LOCATION), height centred).
#   For each vb() approximation: elapsed seconds, iterations, the ELBO and
#   the PSIS log evidence of vb_diagnose(); against NUTS: fixed effects'
#   |mean - NUTS mean| / NUTS sd (max) and sd / NUTS sd (min, max), random
#   effects' median error in NUTS sd and median sd ratio, and the variance
#   components' posterior means.
# Part 2 (scaling): a simulated binomial (1 + x | g) problem with 5
#   observations per group, G = 10^3, 10^4, 10^5: vb(approx = "partial")
#   against glmer() and vglmer() (G <= VBAYES_BENCH_PEER_MAX, default 10^4);
#   above that vb() runs VBAYES_BENCH_BIG_MAXIT sweeps (default 30) and only
#   its time per sweep is reported (the run stays bounded).  vglmer runs
#   for G <= VBAYES_BENCH_VGLMER_MAX (default 10^3).
# Part 3 (the fixed effects' sd deficit on sleepstudy): vb's sd against the
#   exact decomposition E Var(beta | Sigma, tau) + Var E(beta | Sigma, tau)
#   over the NUTS draws of (Sigma, tau).
#
# Environment: VBAYES_BENCH_PARTS ("1,2"), VBAYES_BENCH_NUTS_ITER (default 2000 per chain, 2 chains, half
# warm-up), VBAYES_BENCH_G ("1e3,1e4,1e5"), VBAYES_BENCH_PEER_MAX (1e4), VBAYES_BENCH_BIG_MAXIT (100),
# VBAYES_BENCH_CACHE (a directory for the NUTS draws; reused when present).
suppressPackageStartupMessages({
  library(vbayes)
  library(lme4)
})
has_stan <- requireNamespace("rstan", quietly = TRUE)
has_vglmer <- requireNamespace("vglmer", quietly = TRUE)
nuts_iter <- as.integer(Sys.getenv("VBAYES_BENCH_NUTS_ITER", "2000"))
Gs <- as.numeric(strsplit(Sys.getenv("VBAYES_BENCH_G", "1e3,1e4,1e5"), ",")[[1]])
peer_max <- as.numeric(Sys.getenv("VBAYES_BENCH_PEER_MAX", "1e4"))
big_maxit <- as.integer(Sys.getenv("VBAYES_BENCH_BIG_MAXIT", "100"))
vglmer_max <- as.numeric(Sys.getenv("VBAYES_BENCH_VGLMER_MAX", "1e3"))
cache <- Sys.getenv("VBAYES_BENCH_CACHE", "")  # a directory: NUTS draws are kept there and reused
parts <- strsplit(Sys.getenv("VBAYES_BENCH_PARTS", "1,2"), ",")[[1]]
here <- local({
  a <- grep("^--file=", commandArgs(FALSE), value = TRUE)
  if (length(a)) dirname(normalizePath(sub("^--file=", "", a[1]))) else "bench"
})
el <- function(expr) {
  t <- system.time(v <- eval.parent(substitute(expr)))[["elapsed"]]
  list(t = t, v = v)
}
q <- vb_control(quiet = TRUE)
cat("# Hierarchical GLMs (bench/glmm.R)\n\n")
cat(sprintf("Machine: %d cores, load average %s; %s; %s\n\n", parallel::detectCores(),
            paste(readLines("/proc/loadavg", warn = FALSE), collapse = ""), R.version.string, format(Sys.time(), tz = "UTC", usetz = TRUE)))

data(sleepstudy, cbpp, grouseticks, package = "lme4")
grouseticks$cHEIGHT <- grouseticks$HEIGHT - mean(grouseticks$HEIGHT)
problems <- list(
  sleepstudy = list(f = Reaction ~ Days + (Days | Subject), data = sleepstudy, family = gaussian(),
                    approx = c("partial", "block", "meanfield"), vg = "linear"),
  cbpp = list(f = cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial(),
              approx = c("partial", "block", "meanfield"), vg = "binomial"),
  grouseticks = list(f = TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION), data = grouseticks,
                     family = poisson(), approx = c("partial", "fullrank", "block", "meanfield"), vg = NULL))

stan_mod <- NULL
if (!"1" %in% parts) problems <- list()
if (has_stan && length(problems)) {
  rstan::rstan_options(auto_write = TRUE)
  # Debian's r-cran-bh is an empty shell (Boost lives in /usr/include): point rstan there
  bl <- if (!nzchar(system.file("include", package = "BH")) && dir.exists("/usr/include/boost")) "/usr/include" else NULL
  stan_mod <- el(rstan::stan_model(file.path(here, "glmm.stan"), boost_lib = bl))
  cat(sprintf("Stan model compiled (or loaded) in %.0f s.\n\n", stan_mod$t))
  stan_mod <- stan_mod$v
}

stan_data <- function(fit) {
  X <- fit$x; n <- nrow(X)
  fam <- match(fit$family$family, c("gaussian", "poisson", "binomial")) - 1L
  r1 <- fit$ranef[[1]]; c1 <- fit$cov_q[[1]]$prior
  two <- length(fit$ranef) > 1L
  r2 <- if (two) fit$ranef[[2]] else r1; c2 <- if (two) fit$cov_q[[2]]$prior else c1
  list(N = n, K = ncol(X), X = X, family = fam, y_real = fit$y, y_int = as.integer(round(fit$y)),
       trials = as.integer(round(fit$prior.weights)), offset = fit$offset,
       loc = fit$prior$coef$location, scale = fit$prior$coef$scale,
       tau_a = fit$prior$precision$shape, tau_b = fit$prior$precision$rate,
       G1 = length(r1$levels), d1 = ncol(r1$Z), g1 = r1$group, Z1 = r1$Z, nu1 = c1$df, A1 = as.array(c1$scale),
       has2 = as.integer(two), G2 = length(r2$levels), g2 = r2$group, nu2 = c2$df, A2 = c2$scale[1])
}

rows1 <- list(); rowsvc <- list(); nuts_ess <- list(); nuts_post <- list(); vbfits <- list()
for (nm in names(problems)) {
  pb <- problems[[nm]]
  fits <- lapply(setNames(pb$approx, pb$approx), function(a) {
    r <- el(vb(pb$f, data = pb$data, family = pb$family, approx = a, control = q))
    r$v$bench_time <- r$t
    r$v
  })
  peer <- el(if (pb$family$family == "gaussian") lmer(pb$f, data = pb$data) else glmer(pb$f, data = pb$data, family = pb$family))
  vgt <- list()
  if (has_vglmer && !is.null(pb$vg)) for (fm in c("strong", "weak")) {
    r <- tryCatch(el(vglmer::vglmer(pb$f, data = pb$data, family = pb$vg,
                                    control = vglmer::vglmer_control(factorization_method = fm))), error = function(e) NULL)
    if (!is.null(r)) vgt[[fm]] <- r
  }
  nuts <- NULL
  if (!is.null(stan_mod)) {
    sd0 <- stan_data(fits[[1]])
    cf <- if (nzchar(cache)) file.path(cache, sprintf("glmm-nuts-%s-%d.rds", nm, nuts_iter)) else ""
    if (nzchar(cf) && file.exists(cf)) {
      nuts <- readRDS(cf)
      cat(sprintf("%s: NUTS draws from the cache (%s; sampled in %.0f s)\n", nm, cf, nuts$t))
    } else {
      nuts <- el(rstan::sampling(stan_mod, data = sd0, chains = 2, iter = nuts_iter, refresh = 0, seed = 1,
                                  control = list(adapt_delta = 0.95)))
      nuts$ess <- rstan::summary(nuts$v, pars = "beta")$summary[, "n_eff"]
      nuts$v <- rstan::extract(nuts$v)
      if (nzchar(cf)) { dir.create(cache, showWarnings = FALSE, recursive = TRUE); saveRDS(nuts, cf) }
    }
    post <- nuts$v
    nuts_ess[[nm]] <- nuts$ess
    nuts_post[[nm]] <- post
  }
  for (a in names(fits)) {
    f <- fits[[a]]
    set.seed(1)
    dg <- tryCatch(vb_diagnose(f, S = 2000), error = function(e) NULL)
    row <- data.frame(data = nm, method = paste0("vb ", a), seconds = f$bench_time, iterations = f$iterations,
                      elbo = f$elbo, psis_logev = if (is.null(dg)) NA else dg$logZ_psis, khat = if (is.null(dg)) NA else dg$khat)
    if (!is.null(nuts)) {
      B <- post$beta; ms <- colMeans(B); ss <- apply(B, 2, sd)
      row$fe_err_max <- max(abs(fixef(f) - ms) / ss)
      row$fe_sd_ratio_min <- min(sqrt(diag(vcov(f))) / ss)
      row$fe_sd_ratio_max <- max(sqrt(diag(vcov(f))) / ss)
      set.seed(2)
      if (a %in% c("partial", "fullrank")) si <- sqrt(diag(vcov(f, correction = "integrate", ndraws = 200))) / ss
      if (a %in% c("partial", "fullrank")) { row$fe_sd_ratio_integrated_min <- min(si); row$fe_sd_ratio_integrated_max <- max(si) }
      b1 <- post$b1                      # draws x d1 x G1
      mb <- apply(b1, c(2, 3), mean); sb <- apply(b1, c(2, 3), sd)
      r1 <- fits[[a]]$ranef[[1]]
      vm <- t(r1$mean); vs <- sqrt(apply(r1$cov, 3, diag)); vs <- matrix(vs, nrow(mb))
      row$re_err_median <- median(abs(vm - mb) / sb)
      row$re_sd_ratio_median <- median(vs / sb)
    }
    rows1[[length(rows1) + 1L]] <- row
  }
  rows1[[length(rows1) + 1L]] <- data.frame(data = nm, method = if (pb$family$family == "gaussian") "lmer" else "glmer",
                                            seconds = peer$t, iterations = NA, elbo = NA, psis_logev = NA, khat = NA)
  for (fm in names(vgt)) {
    v <- vgt[[fm]]$v
    row <- data.frame(data = nm, method = paste0("vglmer ", fm), seconds = vgt[[fm]]$t, iterations = NA,
                      elbo = tryCatch(as.numeric(vglmer::ELBO(v)), error = function(e) NA), psis_logev = NA, khat = NA)
    if (!is.null(nuts)) {
      cf <- tryCatch(vglmer::format_vglmer(v), error = function(e) NULL)
      fe <- tryCatch({ mm <- v$beta$mean; vv <- v$beta$var; list(m = as.vector(mm), s = sqrt(diag(as.matrix(vv)))) }, error = function(e) NULL)
      if (!is.null(fe) && length(fe$m) == ncol(post$beta)) {
        row$fe_err_max <- max(abs(fe$m - colMeans(post$beta)) / apply(post$beta, 2, sd))
        row$fe_sd_ratio_min <- min(fe$s / apply(post$beta, 2, sd))
        row$fe_sd_ratio_max <- max(fe$s / apply(post$beta, 2, sd))
      }
    }
    rows1[[length(rows1) + 1L]] <- row
  }
  if (!is.null(nuts)) {
    rows1[[length(rows1) + 1L]] <- data.frame(data = nm, method = sprintf("NUTS (2 x %d)", nuts_iter), seconds = nuts$t,
                                              iterations = NA, elbo = NA, psis_logev = NA, khat = NA)
    S1 <- post$Sigma1
    cq1 <- fits[[1]]$cov_q[[1]]
    vc <- data.frame(data = nm, component = paste0(cq1$factor, " var(", cq1$names, ")"))
    vc$nuts <- vapply(seq_len(dim(S1)[2]), function(k) mean(S1[, k, k]), 0)
    for (a in names(fits)) {
      cq <- fits[[a]]$cov_q[[1]]
      vc[[a]] <- diag(cq$Psi) / (cq$df - nrow(cq$Psi) - 1)
    }
    rowsvc[[nm]] <- vc
  }
  vbfits[[nm]] <- fits
  cat(sprintf("done: %s\n", nm))
}
if (length(rows1)) {
tab1 <- do.call(rbind, lapply(rows1, function(r) { for (k in c("fe_err_max", "fe_sd_ratio_min", "fe_sd_ratio_max", "fe_sd_ratio_integrated_min", "fe_sd_ratio_integrated_max", "re_err_median", "re_sd_ratio_median")) if (is.null(r[[k]])) r[[k]] <- NA; r }))
cat("\n## Part 1: lme4's data sets, against NUTS\n\n")
print(knitr::kable(tab1, digits = 3))
cat("\nVariance components (first grouping factor, posterior means of the variances):\n\n")
for (vc in rowsvc) print(knitr::kable(vc, digits = 3))
}

# Where the fixed effects' sd deficit comes from (sleepstudy, gaussian: every
# conditional is closed form).  Var(beta | y) = E[Var(beta | Sigma, tau, y)] +
# Var(E[beta | Sigma, tau, y]) over the posterior of (Sigma, tau), computed
# from the NUTS draws by generalised least squares with the prior; vb's
# Cov(beta) is Var(beta | Sigma^-1 = E_q Sigma^-1, tau = E_q tau) exactly.
# The MC error of the NUTS sd is about sd / sqrt(2 ESS).
if (!is.null(nuts_post$sleepstudy)) {
  post <- nuts_post$sleepstudy; f <- vbfits$sleepstudy$partial
  X <- f$x; y <- f$y; n <- nrow(X); Zt <- f$ranef[[1]]$Z; g <- f$ranef[[1]]$group; G <- max(g)
  Z <- matrix(0, n, 2 * G); for (k in 1:2) Z[cbind(seq_len(n), (g - 1L) * 2 + k)] <- Zt[, k]
  P0 <- diag(1 / f$prior$coef$scale^2); b0 <- f$prior$coef$location
  gls <- function(Sig, tau) {
    V <- Z %*% kronecker(diag(G), Sig) %*% t(Z) + diag(n) / tau
    Vi <- solve(V); Pm <- crossprod(X, Vi %*% X) + P0
    C <- solve(Pm); list(mean = drop(C %*% (crossprod(X, Vi %*% y) + P0 %*% b0)), cov = C)
  }
  set.seed(3); idx <- sample(dim(post$Sigma1)[1], 400)
  cond <- lapply(idx, function(s) gls(post$Sigma1[s, , ], post$tau[s]))
  within <- Reduce(`+`, lapply(cond, `[[`, "cov")) / length(cond)
  between <- stats::cov(do.call(rbind, lapply(cond, `[[`, "mean")))
  sd_nuts <- apply(post$beta, 2, stats::sd)
  cq <- f$cov_q[[1]]
  plug <- gls(solve(cq$df * solve(cq$Psi)), f$tau[["shape"]] / f$tau[["rate"]])
  ESig <- apply(post$Sigma1, c(2, 3), mean)
  at_mean <- gls(ESig, mean(post$tau))
  dec <- data.frame(coef = colnames(X), nuts_sd = sd_nuts,
                    nuts_sd_mc_rel_se = 1 / sqrt(2 * nuts_ess$sleepstudy),
                    vb_partial = sqrt(diag(vcov(f))) / sd_nuts,
                    vb_partial_integrated = sqrt(diag(vcov(f, correction = "integrate", ndraws = 400))) / sd_nuts,
                    gls_at_vb_plugin = sqrt(diag(plug$cov)) / sd_nuts,
                    gls_at_nuts_mean_Sigma = sqrt(diag(at_mean$cov)) / sd_nuts,
                    within_only = sqrt(diag(within)) / sd_nuts,
                    within_plus_between = sqrt(diag(within + between)) / sd_nuts)
  cat("\n## Part 3: the fixed effects' sd deficit, sleepstudy (ratios to the NUTS sd)\n\n")
  print(knitr::kable(dec, digits = 3, row.names = FALSE))
  cat(sprintf("\nE_q Sigma^-1 inverse (vb's plug-in) vs NUTS E Sigma: diag %s vs %s\n",
              paste(format(diag(solve(cq$df * solve(cq$Psi))), digits = 4), collapse = ", "),
              paste(format(diag(ESig), digits = 4), collapse = ", ")))
}

if (!"2" %in% parts) Gs <- numeric(0)

cat("\n## Part 2: scaling in the number of groups (binomial, (1 + x | g), 5 observations per group)\n\n")
rows2 <- list()
for (G in Gs) {
  set.seed(1)
  m <- 5
  d <- data.frame(g = factor(rep(seq_len(G), each = m)), x = rnorm(G * m))
  eta <- -0.5 + 0.8 * d$x + rnorm(G, sd = 0.7)[d$g] + rnorm(G, sd = 0.3)[d$g] * d$x
  d$y <- rbinom(G * m, 1, plogis(eta))
  ctl <- if (G <= peer_max) q else vb_control(quiet = TRUE, maxit = big_maxit)
  r <- el(suppressWarnings(vb(y ~ x + (1 + x | g), data = d, family = binomial(), control = ctl)))
  row <- data.frame(G = G, n = G * m, vb_seconds = r$t, vb_iterations = r$v$iterations, vb_converged = r$v$converged,
                    vb_per_iteration = r$t / r$v$iterations, glmer_seconds = NA, vglmer_strong_seconds = NA,
                    vb_intercept = fixef(r$v)[[1]], glmer_intercept = NA)
  if (G <= peer_max) {
    g <- el(glmer(y ~ x + (1 + x | g), data = d, family = binomial()))
    row$glmer_seconds <- g$t; row$glmer_intercept <- fixef(g$v)[[1]]
    if (has_vglmer && G <= vglmer_max) {
      v <- tryCatch(el(vglmer::vglmer(y ~ x + (1 + x | g), data = d, family = "binomial",
                                      control = vglmer::vglmer_control(factorization_method = "strong"))), error = function(e) NULL)
      if (!is.null(v)) row$vglmer_strong_seconds <- v$t
    }
  }
  rows2[[length(rows2) + 1L]] <- row
  cat(sprintf("done: G = %g\n", G))
}
if (length(rows2)) print(knitr::kable(do.call(rbind, rows2), digits = 3))
