# A set of standard posteriors for vb_density(): each a log density on the
# constrained scale with its analytic gradient (attribute "gradient"), its
# bounds, and the same model, priors and bounds as a Stan program (rstan 2.21
# syntax) for the NUTS reference and ADVI.  Data are public (mtcars,
# MASS::Pima.tr, the eight schools of Rubin 1981) or simulated with fixed seeds.
#
# posteriors() returns a named list of
#   list(name, data, log_density, lower, upper, par_names, stan, stan_data,
#        init (zeros on the unconstrained scale, mapped to the constrained one),
#        gaussian (TRUE when the posterior is near-Gaussian on the unconstrained
#        scale: the "done when" criterion applies), exact (optional: exact
#        draws replacing NUTS))

posteriors <- function() {
  out <- list()
  add <- function(p) out[[p$name]] <<- p
  dn <- function(x, m, s) -0.5 * ((x - m) / s)^2 - log(s)  # log N up to a constant
  lse <- function(a, b) { m <- pmax(a, b); m + log(exp(a - m) + exp(b - m)) }

  # ---- 1. linear regression, mtcars (mpg ~ wt + hp + qsec, standardised) ----
  X <- cbind(1, scale(as.matrix(mtcars[, c("wt", "hp", "qsec")])))
  y <- mtcars$mpg
  add(list(name = "linreg_mtcars", gaussian = TRUE,
    par_names = c("b0", "b_wt", "b_hp", "b_qsec", "sigma"),
    lower = c(rep(-Inf, 4), 0), upper = Inf,
    log_density = local({ X <- X; y <- y; function(th) {
      b <- th[1:4]; s <- th[5]; r <- y - drop(X %*% b); n <- length(y)
      f <- -n * log(s) - sum(r^2) / (2 * s^2) + sum(dn(b, 0, 10)) - s^2 / 200
      structure(f, gradient = c(drop(crossprod(X, r)) / s^2 - b / 100,
                                -n / s + sum(r^2) / s^3 - s / 100))
    }}),
    stan = "data { int n; matrix[n, 4] X; vector[n] y; }
parameters { vector[4] b; real<lower=0> sigma; }
model { b ~ normal(0, 10); sigma ~ normal(0, 10); y ~ normal(X * b, sigma); }",
    stan_data = list(n = nrow(X), X = X, y = y)))

  # ---- 2. logistic regression, MASS::Pima.tr (7 standardised predictors) ----
  pm <- MASS::Pima.tr
  X <- cbind(1, scale(as.matrix(pm[, 1:7])))
  y <- as.integer(pm$type == "Yes")
  add(list(name = "logistic_pima", gaussian = TRUE,
    par_names = c("b0", paste0("b_", names(pm)[1:7])), lower = -Inf, upper = Inf,
    log_density = local({ X <- X; y <- y; function(th) {
      eta <- drop(X %*% th)
      f <- sum(y * eta - log1p(exp(-abs(eta))) - pmax(eta, 0)) + sum(dn(th, 0, 2.5))
      structure(f, gradient = drop(crossprod(X, y - plogis(eta))) - th / 6.25)
    }}),
    stan = "data { int n; matrix[n, 8] X; int<lower=0, upper=1> y[n]; }
parameters { vector[8] b; }
model { b ~ normal(0, 2.5); y ~ bernoulli_logit(X * b); }",
    stan_data = list(n = nrow(X), X = X, y = y)))

  # ---- 3. Poisson regression (simulated, n = 100, 4 coefficients) ----
  set.seed(301)
  n <- 100
  X <- cbind(1, matrix(rnorm(n * 3), n))
  y <- rpois(n, exp(drop(X %*% c(0.5, 0.4, -0.3, 0.2))))
  add(list(name = "poisson_sim", gaussian = TRUE,
    par_names = paste0("b", 0:3), lower = -Inf, upper = Inf,
    log_density = local({ X <- X; y <- y; function(th) {
      eta <- drop(X %*% th); mu <- exp(eta)
      structure(sum(y * eta - mu) + sum(dn(th, 0, 2)),
                gradient = drop(crossprod(X, y - mu)) - th / 4)
    }}),
    stan = "data { int n; matrix[n, 4] X; int<lower=0> y[n]; }
parameters { vector[4] b; }
model { b ~ normal(0, 2); y ~ poisson_log(X * b); }",
    stan_data = list(n = n, X = X, y = y)))

  # ---- 4. AR(1) (simulated, T = 200), likelihood conditional on y_1 ----
  set.seed(304)
  Tn <- 200
  z <- numeric(Tn); z[1] <- 1
  for (t in 2:Tn) z[t] <- 1 + 0.7 * (z[t - 1] - 1) + rnorm(1, 0, 0.5)
  add(list(name = "ar1", gaussian = TRUE,
    par_names = c("mu", "phi", "sigma"), lower = c(-Inf, -1, 0), upper = c(Inf, 1, Inf),
    log_density = local({ z <- z; function(th) {
      mu <- th[1]; phi <- th[2]; s <- th[3]
      a <- z[-length(z)] - mu; r <- z[-1] - mu - phi * a; m <- length(r)
      f <- -m * log(s) - sum(r^2) / (2 * s^2) + dn(mu, 0, 10) + dn(s, 0, 5)
      structure(f, gradient = c(sum(r * (1 - phi)) / s^2 - mu / 100, sum(r * a) / s^2,
                                -m / s + sum(r^2) / s^3 - s / 25))
    }}),
    stan = "data { int T; vector[T] y; }
parameters { real mu; real<lower=-1, upper=1> phi; real<lower=0> sigma; }
model { mu ~ normal(0, 10); sigma ~ normal(0, 5);
  y[2:T] ~ normal(mu + phi * (y[1:(T - 1)] - mu), sigma); }",
    stan_data = list(T = Tn, y = z)))

  # ---- 5. ARMA(1,1) (simulated, T = 200; the Stan User's Guide model) ----
  set.seed(305)
  e <- rnorm(Tn + 1, 0, 1)
  z <- numeric(Tn); prev <- 0
  for (t in 1:Tn) { z[t] <- 0.5 + 0.6 * prev + 0.3 * e[t] + e[t + 1]; prev <- z[t] }
  z <- z
  add(list(name = "arma11", gaussian = TRUE,
    par_names = c("mu", "phi", "theta", "sigma"), lower = c(-Inf, -1, -1, 0),
    upper = c(Inf, 1, 1, Inf),
    log_density = local({ z <- z; function(th) {
      mu <- th[1]; phi <- th[2]; tt <- th[3]; s <- th[4]; Tn <- length(z)
      err <- numeric(Tn); de <- matrix(0, Tn, 3) # d err / d (mu, phi, theta)
      err[1] <- z[1] - (mu + phi * mu); de[1, ] <- c(-1 - phi, -mu, 0)
      for (t in 2:Tn) {
        err[t] <- z[t] - (mu + phi * z[t - 1] + tt * err[t - 1])
        de[t, ] <- c(-1, -z[t - 1], -err[t - 1]) - tt * de[t - 1, ]
      }
      f <- -Tn * log(s) - sum(err^2) / (2 * s^2) + dn(mu, 0, 10) + dn(phi, 0, 2) +
        dn(tt, 0, 2) - log1p((s / 5)^2)
      g <- -drop(crossprod(de, err)) / s^2 + c(-mu / 100, -phi / 4, -tt / 4)
      structure(f, gradient = c(g, -Tn / s + sum(err^2) / s^3 - 2 * s / (25 + s^2)))
    }}),
    stan = "data { int T; vector[T] y; }
parameters { real mu; real<lower=-1, upper=1> phi; real<lower=-1, upper=1> theta; real<lower=0> sigma; }
model { vector[T] nu; vector[T] err;
  nu[1] = mu + phi * mu; err[1] = y[1] - nu[1];
  for (t in 2:T) { nu[t] = mu + phi * y[t - 1] + theta * err[t - 1]; err[t] = y[t] - nu[t]; }
  mu ~ normal(0, 10); phi ~ normal(0, 2); theta ~ normal(0, 2); sigma ~ cauchy(0, 5);
  err ~ normal(0, sigma); }",
    stan_data = list(T = Tn, y = z)))

  # ---- 6. GARCH(1,1) (simulated, T = 300; the Stan User's Guide model with
  # alpha1, beta1 in (0, 1) each instead of the dependent bound) ----
  set.seed(306)
  Tn <- 300
  r <- numeric(Tn); s2 <- numeric(Tn); s2[1] <- 0.5
  r[1] <- 0.1 + sqrt(s2[1]) * rnorm(1)
  for (t in 2:Tn) { s2[t] <- 0.1 + 0.2 * (r[t - 1] - 0.1)^2 + 0.6 * s2[t - 1]
                    r[t] <- 0.1 + sqrt(s2[t]) * rnorm(1) }
  add(list(name = "garch11", gaussian = FALSE,
    par_names = c("mu", "alpha0", "alpha1", "beta1"), lower = c(-Inf, 0, 0, 0),
    upper = c(Inf, Inf, 1, 1),
    log_density = local({ r <- r; function(th) {
      mu <- th[1]; a0 <- th[2]; a1 <- th[3]; b1 <- th[4]; Tn <- length(r); sig1 <- 0.5
      v <- numeric(Tn); dv <- matrix(0, Tn, 4); v[1] <- sig1^2
      for (t in 2:Tn) {
        v[t] <- a0 + a1 * (r[t - 1] - mu)^2 + b1 * v[t - 1]
        dv[t, ] <- c(-2 * a1 * (r[t - 1] - mu), 1, (r[t - 1] - mu)^2, v[t - 1]) + b1 * dv[t - 1, ]
      }
      e <- r - mu
      f <- sum(-0.5 * log(v) - e^2 / (2 * v))
      w <- -0.5 / v + e^2 / (2 * v^2)
      structure(f, gradient = drop(crossprod(dv, w)) + c(sum(e / v), 0, 0, 0))
    }}),
    stan = "data { int T; vector[T] r; real<lower=0> sigma1; }
parameters { real mu; real<lower=0> alpha0; real<lower=0, upper=1> alpha1; real<lower=0, upper=1> beta1; }
model { vector[T] sigma; sigma[1] = sigma1;
  for (t in 2:T) sigma[t] = sqrt(alpha0 + alpha1 * square(r[t - 1] - mu) + beta1 * square(sigma[t - 1]));
  r ~ normal(mu, sigma); }",
    stan_data = list(T = Tn, r = r, sigma1 = 0.5)))

  # ---- 7, 8. eight schools (Rubin 1981), centred and non-centred ----
  ys <- c(28, 8, -3, 7, -1, 1, 18, 12); ss <- c(15, 10, 16, 11, 9, 11, 10, 18)
  add(list(name = "eight_schools_centered", gaussian = FALSE,
    par_names = c("mu", "tau", paste0("theta", 1:8)), lower = c(-Inf, 0, rep(-Inf, 8)),
    upper = Inf,
    log_density = function(th) {
      mu <- th[1]; tau <- th[2]; t8 <- th[3:10]
      f <- dn(mu, 0, 5) - log1p((tau / 5)^2) + sum(dn(t8, mu, tau)) + sum(dn(ys, t8, ss))
      structure(f, gradient = c(-mu / 25 + sum(t8 - mu) / tau^2,
                                -2 * tau / (25 + tau^2) - 8 / tau + sum((t8 - mu)^2) / tau^3,
                                -(t8 - mu) / tau^2 + (ys - t8) / ss^2))
    },
    stan = "data { int J; real y[J]; real<lower=0> sigma[J]; }
parameters { real mu; real<lower=0> tau; real theta[J]; }
model { mu ~ normal(0, 5); tau ~ cauchy(0, 5); theta ~ normal(mu, tau); y ~ normal(theta, sigma); }",
    stan_data = list(J = 8L, y = ys, sigma = ss)))
  add(list(name = "eight_schools_noncentered", gaussian = FALSE,
    par_names = c("mu", "tau", paste0("eta", 1:8)), lower = c(-Inf, 0, rep(-Inf, 8)),
    upper = Inf,
    log_density = function(th) {
      mu <- th[1]; tau <- th[2]; eta <- th[3:10]; t8 <- mu + tau * eta
      a <- (ys - t8) / ss^2
      f <- dn(mu, 0, 5) - log1p((tau / 5)^2) - sum(eta^2) / 2 + sum(dn(ys, t8, ss))
      structure(f, gradient = c(-mu / 25 + sum(a), -2 * tau / (25 + tau^2) + sum(a * eta),
                                -eta + tau * a))
    },
    stan = "data { int J; real y[J]; real<lower=0> sigma[J]; }
parameters { real mu; real<lower=0> tau; vector[J] eta; }
transformed parameters { vector[J] theta = mu + tau * eta; }
model { mu ~ normal(0, 5); tau ~ cauchy(0, 5); eta ~ normal(0, 1); y ~ normal(theta, sigma); }",
    stan_data = list(J = 8L, y = ys, sigma = ss)))

  # ---- 9. GP regression hyperparameters (simulated, n = 30, squared exponential) ----
  set.seed(309)
  xg <- sort(runif(30, -5, 5))
  yg <- sin(xg) + rnorm(30, 0, 0.3)
  D2 <- outer(xg, xg, "-")^2
  add(list(name = "gp_hyper", gaussian = FALSE,
    par_names = c("rho", "alpha", "sigma"), lower = 0, upper = Inf,
    log_density = local({ D2 <- D2; yg <- yg; function(th) {
      rho <- th[1]; al <- th[2]; s <- th[3]; n <- length(yg)
      E <- exp(-D2 / (2 * rho^2)); K <- al^2 * E + diag(s^2, n)
      R <- chol(K); a <- backsolve(R, forwardsolve(t(R), yg)); Ki <- chol2inv(R)
      f <- -0.5 * sum(yg * a) - sum(log(diag(R))) +
        (-6 * log(rho) - 5 / rho) - al^2 / 2 - s^2 / 2 # inv_gamma(5, 5), half-normals
      W <- tcrossprod(a) - Ki
      dK <- list(al^2 * E * D2 / rho^3, 2 * al * E, diag(2 * s, n))
      g <- vapply(dK, function(M) 0.5 * sum(W * M), 0) + c(-6 / rho + 5 / rho^2, -al, -s)
      structure(f, gradient = g)
    }}),
    stan = "data { int N; real x[N]; vector[N] y; }
parameters { real<lower=0> rho; real<lower=0> alpha; real<lower=0> sigma; }
model { matrix[N, N] K = cov_exp_quad(x, alpha, rho) + diag_matrix(rep_vector(square(sigma), N));
  rho ~ inv_gamma(5, 5); alpha ~ normal(0, 1); sigma ~ normal(0, 1);
  y ~ multi_normal_cholesky(rep_vector(0, N), cholesky_decompose(K)); }",
    stan_data = list(N = 30L, x = xg, y = yg)))

  # ---- 10. two-component normal mixture (simulated, n = 200) ----
  set.seed(310)
  comp <- runif(200) < 0.3
  ym <- ifelse(comp, rnorm(200, -2, 1), rnorm(200, 2, 1))
  add(list(name = "mixture2", gaussian = TRUE,
    par_names = c("lambda", "mu1", "mu2", "sigma"), lower = c(0, -Inf, -Inf, 0),
    upper = c(1, Inf, Inf, Inf),
    log_density = local({ ym <- ym; function(th) {
      lam <- th[1]; m1 <- th[2]; m2 <- th[3]; s <- th[4]
      l1 <- log(lam) + dn(ym, m1, s); l2 <- log1p(-lam) + dn(ym, m2, s)
      L <- lse(l1, l2); w1 <- exp(l1 - L); w2 <- 1 - w1
      z1 <- (ym - m1) / s; z2 <- (ym - m2) / s
      f <- sum(L) + dn(m1, -2, 2) + dn(m2, 2, 2) + dn(s, 0, 2)
      structure(f, gradient = c(sum(w1 / lam - w2 / (1 - lam)),
                                sum(w1 * z1) / s - (m1 + 2) / 4, sum(w2 * z2) / s - (m2 - 2) / 4,
                                sum(w1 * (z1^2 - 1) + w2 * (z2^2 - 1)) / s - s / 4))
    }}),
    stan = "data { int N; vector[N] y; }
parameters { real<lower=0, upper=1> lambda; real mu1; real mu2; real<lower=0> sigma; }
model { mu1 ~ normal(-2, 2); mu2 ~ normal(2, 2); sigma ~ normal(0, 2);
  for (n in 1:N) target += log_mix(lambda, normal_lpdf(y[n] | mu1, sigma), normal_lpdf(y[n] | mu2, sigma)); }",
    stan_data = list(N = 200L, y = ym)))

  # ---- 11. two-state Gaussian HMM (simulated, T = 200); gradient by the
  # Fisher identity over forward-backward posteriors.  The states are ordered
  # by their means, as a user identifies them: the parameters are mu1 and
  # delta = mu2 - mu1 > 0 (the same in the Stan program), so the NUTS chains
  # cannot switch labels. ----
  set.seed(311)
  Tn <- 200
  st <- integer(Tn); st[1] <- 1L
  for (t in 2:Tn) st[t] <- if (runif(1) < c(0.9, 0.85)[st[t - 1]]) st[t - 1] else 3L - st[t - 1]
  yh <- rnorm(Tn, c(-1, 1.5)[st], 0.7)
  add(list(name = "hmm2", gaussian = TRUE,
    par_names = c("p11", "p22", "mu1", "delta", "sigma"), lower = c(0, 0, -Inf, 0, 0),
    upper = c(1, 1, Inf, Inf, Inf),
    log_density = local({ yh <- yh; function(th) {
      p11 <- th[1]; p22 <- th[2]; mu <- c(th[3], th[3] + th[4]); s <- th[5]; Tn <- length(yh)
      A <- matrix(c(p11, 1 - p22, 1 - p11, p22), 2)       # A[i, j] = P(j | i)
      Ee <- cbind(dnorm(yh, mu[1], s), dnorm(yh, mu[2], s))
      al <- matrix(0, Tn, 2); cs <- numeric(Tn)
      a <- 0.5 * Ee[1, ]; cs[1] <- sum(a); al[1, ] <- a / cs[1]
      for (t in 2:Tn) { a <- drop(al[t - 1, ] %*% A) * Ee[t, ]; cs[t] <- sum(a); al[t, ] <- a / cs[t] }
      be <- matrix(1, Tn, 2)
      for (t in (Tn - 1):1) be[t, ] <- drop(A %*% (Ee[t + 1, ] * be[t + 1, ])) / cs[t + 1]
      ga <- al * be
      xi <- matrix(0, 2, 2) # expected transition counts
      for (t in 2:Tn) xi <- xi + A * outer(al[t - 1, ], Ee[t, ] * be[t, ]) / cs[t]
      z <- (yh - matrix(mu, Tn, 2, byrow = TRUE)) / s
      f <- sum(log(cs)) + sum(dn(mu, c(-1, 1), 2)) + dn(s, 0, 2) # uniform priors on p11, p22
      gmu <- colSums(ga * z) / s - (mu - c(-1, 1)) / 4     # d f / d (mu1, mu2)
      structure(f, gradient = c(xi[1, 1] / p11 - xi[1, 2] / (1 - p11),
                                xi[2, 2] / p22 - xi[2, 1] / (1 - p22),
                                gmu[1] + gmu[2], gmu[2],
                                sum(ga * (z^2 - 1)) / s - s / 4))
    }}),
    stan = "data { int T; vector[T] y; }
parameters { real<lower=0, upper=1> p11; real<lower=0, upper=1> p22; real mu1; real<lower=0> delta; real<lower=0> sigma; }
model { vector[2] lp; vector[2] lpn; matrix[2, 2] lA; real mu2 = mu1 + delta;
  lA[1, 1] = log(p11); lA[1, 2] = log1m(p11); lA[2, 1] = log1m(p22); lA[2, 2] = log(p22);
  mu1 ~ normal(-1, 2); mu2 ~ normal(1, 2); sigma ~ normal(0, 2);
  lp[1] = log(0.5) + normal_lpdf(y[1] | mu1, sigma); lp[2] = log(0.5) + normal_lpdf(y[1] | mu2, sigma);
  for (t in 2:T) {
    lpn[1] = log_sum_exp(lp[1] + lA[1, 1], lp[2] + lA[2, 1]) + normal_lpdf(y[t] | mu1, sigma);
    lpn[2] = log_sum_exp(lp[1] + lA[1, 2], lp[2] + lA[2, 2]) + normal_lpdf(y[t] | mu2, sigma);
    lp = lpn;
  }
  target += log_sum_exp(lp); }",
    stan_data = list(T = Tn, y = yh)))

  # ---- 12. correlated 50-d Gaussian (AR(0.9) correlation, scales 0.1 to 10,
  # mean at 10 sd from zero); exact draws are the reference ----
  d <- 50
  sc <- exp(seq(log(0.1), log(10), length.out = d))
  Sig <- 0.9^abs(outer(1:d, 1:d, "-")) * outer(sc, sc)
  m <- 10 * sc
  Pm <- solve(Sig)
  add(list(name = "gauss50", gaussian = TRUE,
    par_names = paste0("x", 1:d), lower = -Inf, upper = Inf,
    log_density = local({ Pm <- Pm; m <- m; function(th) {
      g <- -drop(Pm %*% (th - m))
      structure(0.5 * sum((th - m) * g), gradient = g)
    }}),
    exact = list(mean = m, Sigma = Sig),
    stan = "data { int d; vector[d] m; matrix[d, d] S; }
parameters { vector[d] x; }
model { x ~ multi_normal(m, S); }",
    stan_data = list(d = d, m = m, S = Sig)))

  # starting values: zeros on the unconstrained scale
  lapply(out, function(p) {
    dd <- length(p$par_names)
    lb <- rep_len(p$lower, dd); ub <- rep_len(p$upper, dd)
    init <- ifelse(is.finite(lb) & is.finite(ub), (lb + ub) / 2,
                   ifelse(is.finite(lb), lb + 1, ifelse(is.finite(ub), ub - 1, 0)))
    p$lower <- lb; p$upper <- ub
    p$init <- stats::setNames(init, p$par_names)
    p$data <- p$stan_data
    p
  })
}

# Largest relative error of the analytic gradient against central
# differences at n random points near the unconstrained origin.
gradient_check <- function(p, n = 3, seed = 1) {
  set.seed(seed)
  dd <- length(p$par_names)
  worst <- 0
  for (k in seq_len(n)) {
    u <- rnorm(dd, 0, 0.5)
    x <- ifelse(is.finite(p$lower) & is.finite(p$upper), p$lower + (p$upper - p$lower) * plogis(u),
                ifelse(is.finite(p$lower), p$lower + exp(u), ifelse(is.finite(p$upper), p$upper - exp(u), u)))
    if (p$name == "gauss50") x <- x + 10 * exp(seq(log(0.1), log(10), length.out = dd))
    g <- attr(p$log_density(x), "gradient")
    num <- vapply(seq_len(dd), function(i) {
      h <- 1e-6 * max(1, abs(x[i]))
      e <- replace(numeric(dd), i, h)
      (as.double(p$log_density(x + e)) - as.double(p$log_density(x - e))) / (2 * h)
    }, 0)
    worst <- max(worst, max(abs(g - num) / pmax(1, abs(num))))
  }
  worst
}

# Draws (S x d, constrained) mapped to the unconstrained scale of
# vb_density() and Stan (log for one bound, logit for two).
unconstrain_draws <- function(p, X) {
  U <- X
  for (j in seq_len(ncol(X))) {
    lb <- p$lower[j]; ub <- p$upper[j]; x <- X[, j]
    U[, j] <- if (is.finite(lb) && is.finite(ub)) stats::qlogis((x - lb) / (ub - lb))
              else if (is.finite(lb)) log(x - lb) else if (is.finite(ub)) log(ub - x) else x
  }
  U
}

# A-priori classification of a posterior as near-Gaussian on the
# unconstrained scale, from reference draws only (no vbayes output):
# every margin's |skewness| <= 0.5 and |excess kurtosis| <= 1, and, after
# symmetric whitening z = Sigma^{-1/2} (u - m), every |cor(z_i^2, z_j^2)|
# (a scale mixture: the spread of one coordinate depends on another, as in
# a funnel) and |cor(z_i, z_j^2)| (a curved, banana-like dependence) at most
# 0.15.  For a Gaussian all of these are 0; the thresholds sit well above
# their sampling noise at 4000 draws (sd about 0.04 for skewness, 0.08 for
# kurtosis, 0.02 for a correlation).
classify_gaussian <- function(U, skew_max = 0.5, kurt_max = 1, dep_max = 0.15) {
  U <- U[stats::complete.cases(U) & apply(is.finite(U), 1, all), , drop = FALSE]
  C <- scale(U, scale = FALSE)
  s <- apply(C, 2, stats::sd)
  Zs <- sweep(C, 2, s, "/")
  skew <- colMeans(Zs^3); kurt <- colMeans(Zs^4) - 3
  e <- eigen(stats::cov(U), symmetric = TRUE)
  W <- e$vectors %*% diag(1 / sqrt(pmax(e$values, 1e-300)), ncol(U)) %*% t(e$vectors)
  Z <- C %*% W
  d <- ncol(U)
  dep_sq <- dep_cu <- 0
  if (d > 1) {
    R2 <- stats::cor(Z^2); diag(R2) <- 0
    R1 <- stats::cor(Z, Z^2); diag(R1) <- 0
    dep_sq <- max(abs(R2)); dep_cu <- max(abs(R1))
  }
  ok <- max(abs(skew)) <= skew_max && max(abs(kurt)) <= kurt_max &&
    max(dep_sq, dep_cu) <= dep_max
  list(gaussian = ok, skew = max(abs(skew)), kurt = max(abs(kurt)), dep_sq = dep_sq,
       dep_cu = dep_cu,
       why = if (ok) "" else paste(c(if (max(abs(skew)) > skew_max) "skewed margin",
                                     if (max(abs(kurt)) > kurt_max) "heavy/light-tailed margin",
                                     if (dep_sq > dep_max) "scale dependence",
                                     if (dep_cu > dep_max) "curved dependence"), collapse = ", "))
}

# The optimum of the Gaussian family (fullrank or meanfield) on the
# unconstrained scale, found without vbayes' engine: the ELBO estimated at
# S fixed standard-normal draws (common random numbers, antithetic) is a
# deterministic function of (mu, L), maximised by BFGS with its exact
# gradient (reparameterisation) from the start (mu0, L0).  Returns mu, L and
# the fixed-sample ELBO.
family_optimum <- function(p, mu0, L0, approx = "fullrank", S = 1000, seed = 7, maxit = 500) {
  d <- length(mu0)
  set.seed(seed)
  E <- matrix(stats::rnorm(d * S / 2), d); E <- cbind(E, -E)
  lb <- p$lower; ub <- p$upper
  lo <- is.finite(lb) & !is.finite(ub); up <- !is.finite(lb) & is.finite(ub)
  two <- is.finite(lb) & is.finite(ub); w <- ub - lb
  # the unconstrained log density and gradient at one u
  fu <- function(u) {
    x <- u; dx <- rep(1, d); lj <- 0; dlj <- rep(0, d)
    x[lo] <- lb[lo] + exp(u[lo]); dx[lo] <- exp(u[lo])
    x[up] <- ub[up] - exp(u[up]); dx[up] <- -exp(u[up])
    pl <- stats::plogis(u[two]); x[two] <- lb[two] + w[two] * pl; dx[two] <- w[two] * pl * (1 - pl)
    lj <- sum(u[lo | up]) + sum(log(w[two]) + log(pl) + log1p(-pl))
    dlj[lo | up] <- 1; dlj[two] <- 1 - 2 * pl
    v <- p$log_density(x)
    list(f = as.double(v) + lj, g = attr(v, "gradient") * dx + dlj)
  }
  ix <- which(lower.tri(diag(d), diag = TRUE))
  fr <- approx == "fullrank"
  unpack <- function(par) {
    mu <- par[1:d]
    if (fr) { L <- matrix(0, d, d); L[ix] <- par[-(1:d)]; diag(L) <- exp(diag(L)) }
    else L <- diag(exp(par[-(1:d)]), d)
    list(mu = mu, L = L)
  }
  cache <- new.env()
  eval_all <- function(par) {
    if (identical(cache$par, par)) return(cache$r)
    q <- unpack(par); U <- q$mu + q$L %*% E
    fs <- numeric(S); G <- matrix(0, d, S)
    for (s in seq_len(S)) { r <- fu(U[, s]); fs[s] <- r$f; G[, s] <- r$g }
    val <- mean(fs) + sum(log(diag(q$L)))
    if (!is.finite(val) || any(!is.finite(G))) val <- -Inf
    gm <- rowMeans(G)
    GL <- G %*% t(E) / S                      # d/dL_ij = E[g_i e_j]
    if (fr) { GL <- GL * lower.tri(GL, diag = TRUE); diag(GL) <- diag(GL) * diag(q$L) + 1; gl <- GL[ix] }
    else gl <- diag(GL) * diag(q$L) + 1
    cache$par <- par; cache$r <- list(val = val, grad = c(gm, gl))
    cache$r
  }
  st <- if (fr) { T0 <- L0; diag(T0) <- log(diag(T0)); T0[ix] } else log(diag(L0))
  op <- stats::optim(c(mu0, st), function(par) { v <- eval_all(par)$val; if (is.finite(v)) -v else 1e300 },
                     function(par) -eval_all(par)$grad, method = "BFGS",
                     control = list(maxit = maxit, reltol = 1e-12))
  q <- unpack(op$par)
  list(mu = q$mu, L = q$L, elbo = -op$value, convergence = op$convergence,
       elbo_at = function(mu, L) { v <- eval_all(c(mu, if (fr) { T <- L; diag(T) <- log(diag(T)); T[ix] } else log(diag(L))))$val; v })
}
