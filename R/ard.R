#' Automatic relevance determination (ARD) prior on groups of coefficients
#'
#' `prior = ard(shape, rate)` in [vb()] gives each group g of coefficients
#' (by default one group per formula term, so each basis-expanded filter such
#' as a coupling or history filter is one group) its own prior precision:
#' beta_g ~ N(0, alpha_g^-1 I), alpha_g ~ Gamma(shape, rate). The posterior is
#' approximated by q(beta) q(alpha) with q(beta) Gaussian (the `approx` family
#' of [vb()]) and q(alpha_g) = Gamma(shape + d_g / 2, rate + E||beta_g||^2 / 2),
#' updated in closed form between Gaussian q(beta) updates of the coordinate-
#' ascent engine (Bishop & Tipping's variational relevance vector machine).
#' Every step maximises the ELBO over one factor, so the ELBO never decreases;
#' it is complete (KL(q(alpha) || p(alpha)) included) and so comparable with
#' any other fit of the same data by [compare_models()].
#'
#' A group the data do not support is pruned: E(alpha_g) grows and its
#' coefficients shrink to zero. The fit's `ard` table reports E(alpha_g) and each
#' group's relevance gamma_g / d_g, where gamma_g = d_g - E(alpha_g) tr(Sigma_gg)
#' is the number of its coefficients the data determine (MacKay's
#' well-determined parameters): near 1 for a group the data pin down, near 0
#' for a pruned one. The intercept keeps `prior_intercept`.
#'
#' The default Gamma(0.01, 1e-4) is vague (prior mean precision 100, with a
#' coefficient of variation of 10): a group is not shrunk much unless the data
#' say nothing about it. As for any prior, the ELBO depends on `shape` and
#' `rate`: compare models under the same ARD prior.
#'
#' @param shape,rate Shape and rate of the Gamma prior on each group's
#'   precision; positive numbers.
#' @param groups `NULL` (one group per formula term), or a vector with one
#'   group label per non-intercept coefficient, or a list of character vectors
#'   of coefficient names partitioning them.
#' @return A prior object of class `c("vb_ard", "vb_prior")`.
#' @examples
#' set.seed(1)
#' d <- data.frame(x1 = rnorm(300), x2 = rnorm(300), x3 = rnorm(300))
#' d$y <- rpois(300, exp(0.5 + 0.6 * d$x1))
#' fit <- vb(y ~ x1 + x2 + x3, data = d, family = poisson(), prior = ard())
#' fit$ard
#' @export
ard <- function(shape = 0.01, rate = 1e-4, groups = NULL) {
  ok <- function(v) is.numeric(v) && length(v) == 1L && is.finite(v) && v > 0
  if (!ok(shape) || !ok(rate))
    stop("ard(): 'shape' and 'rate' must be single finite positive numbers (an improper Gamma prior would leave the evidence undefined).",
         call. = FALSE)
  if (!is.null(groups) && !(is.atomic(groups) && length(groups) && !anyNA(groups)) && !is.list(groups))
    stop("ard(): 'groups' must be NULL, a vector of group labels (one per coefficient) or a list of coefficient names.",
         call. = FALSE)
  structure(list(dist = "ard", shape = shape, rate = rate, groups = groups), class = c("vb_ard", "vb_prior"))
}

# Group index (1..G) of each column, NA for the intercept.
ard_groups <- function(prior, cn, assign) {
  is_int <- cn == "(Intercept)"
  k <- sum(!is_int)
  g <- rep(NA_integer_, length(cn))
  if (!k) return(g)
  lab <- prior$groups
  if (is.null(lab)) {
    lab <- if (is.null(assign)) seq_along(cn)[!is_int] else assign[!is_int]
  } else if (is.list(lab)) {
    all <- unlist(lab)
    if (!is.character(all) || anyDuplicated(all) || !setequal(all, cn[!is_int]))
      stop("ard(groups = ): the groups must partition the non-intercept coefficients (",
           toString(cn[!is_int]), "), each name exactly once.", call. = FALSE)
    v <- integer(length(cn))
    for (i in seq_along(lab)) v[match(lab[[i]], cn)] <- i
    lab <- v[!is_int]
  } else if (length(lab) != k) {
    stop(sprintf("ard(groups = ): give one group label per non-intercept coefficient (%d), or a list of names.", k),
         call. = FALSE)
  }
  g[!is_int] <- match(lab, unique(lab))
  attr(g, "labels") <- as.character(unique(lab))
  g
}

# log-Gamma-density expectations: KL(Gamma(a, b) || Gamma(a0, b0)).
kl_gamma <- function(a, b, a0, b0) {
  (a - a0) * digamma(a) - lgamma(a) + lgamma(a0) + a0 * (log(b) - log(b0)) + a * (b0 - b) / b
}

# Coordinate ascent for q(beta) q(alpha): the Gaussian q(beta) step is the GLM
# engine with the prior precision of each group at E[alpha] (warm-started at
# the previous means); the q(alpha) step is closed form.  The ELBO of the ARD
# model is the engine's ELBO with its Gaussian prior terms for the ARD
# coefficients replaced by E_q log N(beta_g; 0, alpha_g^-1 I) - KL(q(alpha)).
#
# A plain sweep resumes q(beta) where the last one left it (the engine's warm
# start) for two engine iterations, so it is cheap and cannot lower the ELBO.
# Sweeps converge linearly, slowly where a group is being pruned (E[alpha_g]
# moves by a near-constant factor per sweep), so every two plain sweeps are
# followed by a proposal, kept only when its ELBO is at least the current one
# (every state on the trace is at least as good as the one before): first the
# fixed point of the quadratic model (ard_surrogate), and once that no longer
# helps, per-group Aitken extrapolation of the log rates (ard_aitken), backing
# off when rejected.  Converged: the engine met its own criterion on the last
# sweep, and the limit projected from the last two gains is within tol.
ard_cavi <- function(model, prior, groups, blocks, init, control) {
  j <- which(!is.na(groups))
  gj <- groups[j]
  G <- max(c(0L, groups), na.rm = TRUE)
  dg <- tabulate(gj, G)
  a0 <- prior$shape; b0 <- prior$rate
  a <- a0 + dg / 2 # the shape of q(alpha) after its first update
  model$prior_type[j] <- 0L
  model$prior_location[j] <- 0
  sum_g <- function(v) vapply(split(v, factor(gj, seq_len(G))), sum, numeric(1), USE.NAMES = FALSE)
  iters <- 0L
  rank <- NA_integer_
  inner <- control
  inner$maxit <- 2L # a sweep's q(beta) step: two engine iterations from the previous q(beta)
  # One sweep from q(alpha) = Gamma(shape, rate): q(beta) at E[alpha], then
  # q(alpha).  `prec` (the previous q(beta)'s precision) warm-starts the engine
  # at that q(beta), so the sweep cannot lower the ELBO; the engine then needs
  # only a step or two, not a fit to convergence, per q(alpha) update.
  sweep <- function(shape, rate, init, prec = NULL) {
    lam <- (shape / rate)[gj]
    model$prior_scale[j] <- 1 / sqrt(lam)
    core <- .Call(C_glm_cavi, model, c(init, prec), blocks, if (is.null(prec)) control else inner)
    iters <<- iters + as.integer(core$iterations)
    if (is.na(rank) && is.numeric(core$rank)) rank <<- core$rank
    if (!core$status %in% 0:1) return(list(core = core, status = core$status, elbo = NA_real_))
    S <- as.matrix(core$Sigma)
    P <- tryCatch(chol2inv(chol(S)), error = function(e) NULL)
    if (is.null(P)) return(list(core = core, status = 4L, elbo = NA_real_))
    ebb <- core$mu[j]^2 + diag(S)[j]
    p_eng <- sum(-0.5 * log(2 * pi) + 0.5 * log(lam) - 0.5 * lam * ebb)
    b <- b0 + sum_g(ebb) / 2
    p_ard <- sum(dg * (-0.5 * log(2 * pi) + 0.5 * (digamma(a) - log(b))) - 0.5 * (a / b) * sum_g(ebb)) -
      sum(kl_gamma(a, b, a0, b0))
    elbo <- core$elbo - p_eng + p_ard
    init[seq_along(core$mu)] <- core$mu
    if (!is.null(core$tau)) init[length(core$mu) + 1:2] <- core$tau
    list(core = core, rate = b, lam = lam, elbo = elbo, init = init, prec = P,
         engine_ok = core$status == 0L, status = if (is.finite(elbo)) 0L else 4L)
  }
  slack <- function(e) 1e-10 * (1 + abs(e))
  trace <- numeric(0)
  st <- sweep(rep(a0, G), rep(b0, G), init)
  status <- st$status
  if (status == 0L) trace <- st$elbo
  n_sweeps <- 1L
  # A plain sweep from the state: FALSE when the run must stop (status set).
  # Sweeps converge linearly and slowly along a pruning direction, so the
  # test is on the limit projected from two consecutive gains (Aitken): the
  # last gain d2 over 1 - rho, rho = d2 / d1.
  step <- function(d1 = NULL) {
    if (n_sweeps >= control$maxit) { status <<- 1L; return(NULL) }
    s <- sweep(a, st$rate, st$init, st$prec); n_sweeps <<- n_sweeps + 1L
    if (s$status != 0L) { status <<- s$status; return(NULL) }
    if (s$elbo < st$elbo - slack(st$elbo)) { status <<- 5L; return(NULL) }
    d2 <- max(s$elbo - st$elbo, 0)
    st <<- s; trace <<- c(trace, s$elbo)
    if (!is.null(d1) && s$engine_ok) { # q(beta) met the engine's own criterion too
      rho <- if (d1 > 0) min(d2 / d1, 0.999) else 0
      if (tol_met(s$elbo - d2, s$elbo + d2 * rho / (1 - rho), control$tol)) return(NULL)
    }
    d2
  }
  wait <- 0L; backoff <- 1L; use_model <- TRUE
  while (status == 0L) {
    r0 <- st$rate
    d1 <- step()
    if (is.null(d1)) break
    r1 <- st$rate
    if (is.null(step(d1))) break
    if (n_sweeps >= control$maxit || (wait <- wait - 1L) > 0L) next
    prop <- if (use_model) ard_surrogate(st, j, gj, a, b0, sum_g) else ard_aitken(st, r0, r1)
    if (is.null(prop)) { use_model <- FALSE; next }
    s <- sweep(a, prop$rate, prop$init, prop$prec); n_sweeps <- n_sweeps + 1L
    if (s$status %in% 6:8) { status <- s$status; break } # interrupted or internal: never swallowed
    if (s$status == 0L && s$elbo >= st$elbo) {
      st <- s; trace <- c(trace, s$elbo); backoff <- 1L
    } else if (use_model) { # the quadratic model no longer predicts well: extrapolate instead
      use_model <- FALSE
    } else { # a rejected extrapolation: wait twice as long before the next
      backoff <- 2L * backoff; wait <- backoff
    }
  }
  core <- st$core
  if (!is.null(core)) {
    core$elbo <- if (length(trace)) trace[length(trace)] else core$elbo
    core$kl <- core$loglik - core$elbo
    core$trace <- trace
  }
  core$status <- status
  core$iterations <- iters
  if (is.na(core$rank %||% NA)) core$rank <- rank
  b <- if (is.null(st$rate)) rep(b0, G) else st$rate
  S <- if (is.null(core$Sigma)) NULL else diag(as.matrix(core$Sigma))[j]
  core$ard <- list(shape = a, rate = b, groups = as.vector(groups), labels = attr(groups, "labels"), size = dg,
                   trSigma = if (is.null(S)) NA else sum_g(S), sweeps = n_sweeps)
  core
}

# The proposal of an accelerated ARD step: the fixed point of the q(alpha)
# updates when the expected log-likelihood is replaced by its quadratic model
# at the current q(beta).  The engine's q(beta) = N(m, S) is optimal for the
# prior precisions lam it was fitted at, so S^-1 = H + Lambda and the model's
# optimum for other precisions Lambda' is S' = (S^-1 + Lambda' - Lambda)^-1,
# m' = S' S^-1 m; each iteration costs one p x p Cholesky factorisation, not a
# pass over the data.  The engine then fits q(beta) at the proposed rates, and
# the proposal is kept only if the exact ELBO did not fall.
ard_surrogate <- function(st, j, gj, a, b0, sum_g, maxit = 500L) {
  P <- st$prec
  Pm <- drop(P %*% st$core$mu)
  b <- st$rate
  for (it in seq_len(maxit)) {
    A <- P
    ea <- a / b
    A[cbind(j, j)] <- A[cbind(j, j)] + ea[gj] - st$lam
    RA <- tryCatch(chol(A), error = function(e) NULL)
    if (is.null(RA)) return(NULL)
    m <- backsolve(RA, forwardsolve(t(RA), Pm))
    s2 <- colSums(backsolve(RA, diag(nrow(A)))^2) # diag of A^-1
    b_new <- b0 + sum_g(m[j]^2 + s2[j]) / 2
    done <- max(abs(b_new - b) / b) < 1e-8
    b <- b_new
    if (done) break
  }
  if (any(!is.finite(b)) || any(b <= 0)) return(NULL)
  A <- P
  A[cbind(j, j)] <- A[cbind(j, j)] + (a / b)[gj] - st$lam
  init <- st$init
  init[seq_along(m)] <- m
  list(rate = b, init = init, prec = A)
}

# The other proposal: each group's log rate extrapolated along its last two
# plain-sweep steps (Aitken's delta-squared), where they shrink geometrically;
# a group pruned slowly moves by a near-constant factor per sweep, and this
# jumps to the limit of that sequence.  q(beta) is resumed from the state.
ard_aitken <- function(st, r0, r1) {
  x0 <- log(r0); x1 <- log(r1); x2 <- log(st$rate)
  d1 <- x1 - x0; d2 <- x2 - x1
  rho <- ifelse(abs(d1) > 0, d2 / d1, 0)
  ok <- is.finite(rho) & rho > 0 & rho < 1
  if (!any(ok)) return(NULL)
  jump <- ifelse(ok, d2 * rho / (1 - rho), 0)
  jump <- pmax(pmin(jump, log(1e4)), -log(1e4))
  list(rate = exp(x2 + jump), init = st$init, prec = st$prec)
}

# The per-group table of a fit: E[alpha], the prior sd it implies, relevance.
ard_table <- function(ard, cn) {
  j <- which(!is.na(ard$groups))
  G <- length(ard$shape)
  members <- vapply(seq_len(G), function(k) paste(cn[j][ard$groups[j] == k], collapse = ", "), character(1))
  ea <- ard$shape / ard$rate
  gamma <- ard$size - ea * ard$trSigma
  data.frame(group = ard$labels, coefficients = members, size = ard$size, E_alpha = ea,
             prior_sd = 1 / sqrt(ea), relevance = pmin(pmax(gamma / ard$size, 0), 1),
             stringsAsFactors = FALSE)
}
