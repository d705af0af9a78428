# SGVB for the GLMs of vb_fit(): q over theta = beta (and log tau for
# gaussian) as one Gaussian.  Returns the list C_glm_cavi returns; for gaussian
# tau = NULL and the joint q is in $sgvb (q_sample() reads it).  The ELBO at
# the returned q is computed in closed form, so its Monte Carlo error is 0.
# With the reparameterisation estimator the engine runs its Newton mode with
# control variates (src/sgvb.c): the Laplace curvature whitens the steps and
# its quadratic model is integrated exactly, so the gradient noise left is
# the posterior's departure from that Gaussian and a run of one draw per
# step converges in tens of steps (windows of max(5, window / 20) steps).
sgvb_glm <- function(model, approx, control) {
  if (approx == "block")
    stop("vb(): method = \"sgvb\" supports approx = \"fullrank\" or \"meanfield\"; use method = \"cavi\" for \"block\".", call. = FALSE)
  X <- model$X; p <- ncol(X); cn <- colnames(X)
  gauss <- model$family == 0L
  init <- glm_init(model, cn)
  st <- laplace_start(model, init, p, gauss)
  mu0 <- st$mu; H <- st$H
  L0 <- init_chol(H, approx)
  estimator <- control$estimator
  # the closed-form ELBO below replaces a Monte Carlo one: none is computed
  pre <- pre_chol(H)
  opts <- sgvb_opts(control, approx, estimator, laplace = TRUE, final_elbo = FALSE)
  if (!is.null(pre) && estimator == "reparam") {
    # the curvature of the start whitens the steps well enough for plain
    # (Newton-like) gradient steps; their noise is small, so short windows
    opts$newton <- TRUE
    opts$window <- max(5L, as.integer(ceiling(control$window / 20)))
    opts$control_variate <- TRUE
  }
  opts$glm_moments <- !gauss
  r <- .Call(C_sgvb_fit, list(type = "glm", glm = model), as.double(mu0), L0, pre, control, opts)
  status <- r$status
  ix <- seq_len(p)
  Sj <- tcrossprod(r$L)
  mu <- r$mu[ix]
  Sb <- Sj[ix, ix, drop = FALSE]
  ex <- if (!is.null(r$glm_elbo)) list(elbo = r$glm_elbo[1], loglik = r$glm_elbo[2], kl = r$glm_elbo[3])
  if (is.null(ex)) ex <- tryCatch(if (gauss) glm_elbo_joint(model, r$mu, Sj) else {
    e <- .Call(C_glm_elbo, model, mu, Sb, c(1, 1))
    list(elbo = e$elbo, loglik = e$loglik, kl = e$kl)
  }, error = function(e) NULL)
  mc_se <- 0
  if (is.null(ex)) { # numerically singular q: a Monte Carlo ELBO instead
    mc <- glm_mc_elbo(model, r$mu, r$L, control$elbo_samples)
    ex <- list(elbo = mc[1], loglik = NA_real_, kl = NA_real_)
    mc_se <- mc[2]
  }
  # a convergence claim needs a finite ELBO at the returned q
  if (status == 0L && !is.finite(ex$elbo)) status <- vb_status_codes[["nonfinite"]]
  em <- r$eta_mean; ev <- r$eta_var # computed with the closed-form ELBO
  if (is.null(em)) {
    em <- drop(X %*% mu) + model$offset
    ev <- rowSums((X %*% Sb) * X)
  }
  nm <- c(cn, if (gauss) "log_tau")
  list(mu = mu, Sigma = Sb, elbo = ex$elbo, trace = r$trace, loglik = ex$loglik, kl = ex$kl,
       iterations = r$iterations, status = status, converged = status == 0L, tau = NULL,
       eta_mean = em, eta_var = ev, mc_se = mc_se, blocks = NULL,
       sgvb = list(mu = setNames(r$mu, nm), Sigma = structure(Sj, dimnames = list(nm, nm)),
                   L = r$L, smooth = r$smooth, eta = r$eta, n_grad = r$n_grad,
                   n_eval = r$n_eval, n_nonfinite = r$n_nonfinite,
                   estimator = estimator, newton_steps = st$steps))
}

# Monte Carlo ELBO of a GLM at q = N(mu, L L') over theta (S draws through
# the C log joint): c(estimate, standard error), -Inf if a draw is not finite.
glm_mc_elbo <- function(model, mu, L, S) {
  d <- length(mu)
  Z <- matrix(stats::rnorm(d * S), d, S)
  f <- .Call(C_glm_log_joint, model, mu + L %*% Z)$value
  r <- f + 0.5 * colSums(Z^2) + 0.5 * d * log(2 * pi) + sum(log(diag(L)))
  if (any(!is.finite(r))) return(c(-Inf, NA_real_))
  c(mean(r), stats::sd(r) / sqrt(S))
}

# Start of GLM SGVB (C_sgvb_glm_start, src/sgvb_targets.c): damped Newton
# steps on log p(y, theta) from the CAVI starting values towards the posterior mode (gaussian: beta at tau fixed,
# then log tau at its conditional mode), and the curvature there (X'WX plus
# the prior precision; for laplace priors 1/scale^2 stands in).  q starts at
# this Laplace approximation, whose Cholesky factor also whitens the steps
# and defines the control variates.  The curvature X'WX (one dsyrk, the
# cost of the start) is refreshed only after a step that moved beta far
# (Newton decrement above 1 nat) and once at the end if beta moved since;
# steps in between reuse it (chord steps: one gradient each).  The search
# stops once the decrement is below 1e-4 nat (the mode within about 0.01
# posterior sd): the SGVB steps, Newton-like themselves, finish the job.
laplace_start <- function(model, init, p, gauss) {
  X <- model$X
  ltau <- if (gauss) log(init[p + 1L] / init[p + 2L]) else numeric(0)
  st <- .Call(C_sgvb_glm_start, model, as.double(c(init[seq_len(p)], ltau)))
  if (st$status == vb_status_codes[["interrupted"]]) check_status(st$status, "vb() (SGVB start)")
  beta <- st$mu[seq_len(p)]
  H <- st$H
  if (gauss) {
    # conditional mode of log tau: (a0 + n/2) - tau (b0 + sum w r^2 / 2) = 0
    pos <- model$weights > 0
    r <- model$y - drop(X %*% beta) - model$offset
    ss <- model$tau_prior[2] + 0.5 * sum(model$weights[pos] * r[pos]^2)
    ltau <- log((model$tau_prior[1] + sum(pos) / 2) / ss)
    H <- crossprod(X * sqrt(exp(ltau) * model$weights)) + diag(1 / model$prior_scale^2, p)
    H <- rbind(cbind(H, 0), c(rep(0, p), sum(pos) / 2 + model$tau_prior[1]))
  }
  list(mu = as.double(c(beta, ltau)), H = H, steps = st$steps)
}

# Closed-form ELBO of a gaussian GLM at a joint Gaussian q over (beta, l),
# l = log tau.  With r_t = y_t - x_t'beta, E[e^l r^2] = E[e^l] E~[r^2] under
# the tilted law where r has mean m_r + Cov(r, l) and the same variance.
glm_elbo_joint <- function(model, mu, Sigma) {
  X <- model$X; p <- ncol(X); ix <- seq_len(p); d <- p + 1L
  ml <- mu[d]; s2 <- Sigma[d, d]; cbl <- Sigma[ix, d]
  Sb <- Sigma[ix, ix, drop = FALSE]
  w <- model$weights; pos <- w > 0
  mr <- model$y - model$offset - drop(X %*% mu[ix])
  vr <- rowSums((X %*% Sb) * X)
  mt <- mr - drop(X %*% cbl)
  Et <- exp(ml + s2 / 2)
  loglik <- sum(0.5 * (log(w[pos]) + ml - log(2 * pi) - w[pos] * Et * (mt[pos]^2 + vr[pos])))
  loc <- model$prior_location; b <- model$prior_scale; sb <- sqrt(diag(Sb))
  dd <- mu[ix] - loc
  z <- dd / sb
  ep <- ifelse(model$prior_type == 0L,
               -0.5 * (log(2 * pi) + 2 * log(b)) - 0.5 * (dd^2 + sb^2) / b^2,
               -log(2 * b) - (sb * sqrt(2 / pi) * exp(-z^2 / 2) + dd * (2 * pnorm(z) - 1)) / b)
  a0 <- model$tau_prior[1]; b0 <- model$tau_prior[2]
  eprior <- sum(ep) + a0 * log(b0) - lgamma(a0) + a0 * ml - b0 * Et
  R <- chol(Sigma)
  H <- sum(log(diag(R))) + d / 2 * (1 + log(2 * pi))
  kl <- -(eprior + H)
  list(elbo = loglik - kl, loglik = loglik, kl = kl)
}


# The estimator options of C_sgvb_fit / C_sgvb_grad (the rest of the settings
# are read by name from the vb_control() list).  laplace = TRUE: q starts at
# the Laplace approximation, so the engine skips the step-size search and
# starts at its final step size (unless control$step_size is set).
# final_elbo = FALSE: no Monte Carlo ELBO at the end (the caller has a
# closed form); else it stops once its standard error is below
# elbo_se_target(control) (at most control$elbo_samples draws).
sgvb_opts <- function(control, approx, estimator, laplace = FALSE, final_elbo = TRUE) {
  S <- control$samples
  if (is.null(S)) S <- if (estimator == "score") 8L else 1L
  list(fullrank = approx == "fullrank", score = estimator == "score", samples = as.integer(S),
       laplace_start = isTRUE(laplace) && is.null(control$step_size),
       final_elbo = isTRUE(final_elbo), elbo_se = elbo_se_target(control))
}

# The standard error at which an ELBO estimate stops drawing: SGVB_ELBO_SE at
# the default of 1000 elbo_samples, smaller in proportion when a user asks
# for more draws (so elbo_samples keeps meaning "this much precision").
elbo_se_target <- function(control) {
  S <- control$elbo_samples
  if (is.null(S)) S <- 1000L
  SGVB_ELBO_SE * sqrt(1000 / S)
}
# Monte Carlo standard error (nats) at which an ELBO estimate of the default
# 1000 draws at most stops drawing: well below any ELBO difference that
# changes a model comparison.
SGVB_ELBO_SE <- 0.025

# Lower-triangular L with L L' = H^{-1} (fullrank) or diag(1 / sqrt(diag H))
# (meanfield); unit scales where H is not positive definite.
init_chol <- function(H, approx) {
  d <- nrow(H)
  if (approx == "meanfield") {
    h <- diag(H)
    return(diag(ifelse(is.finite(h) & h > 0, 1 / sqrt(h), 1), d))
  }
  L <- pre_chol(H)
  if (is.null(L)) init_chol(H, "meanfield") else L
}

# Lower Cholesky factor of H^{-1}, the preconditioner of the locations (NULL
# when H is not positive definite).
pre_chol <- function(H) {
  R <- tryCatch(chol(H), error = function(e) NULL)
  if (is.null(R) || any(!is.finite(R))) return(NULL)
  L <- tryCatch(t(chol(chol2inv(R))), error = function(e) NULL)
  if (is.null(L) || any(!is.finite(L)) || any(diag(L) <= 0)) NULL else L
}
