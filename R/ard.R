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
# engine with the prior precision of each group at E[alpha_g] (warm-started at
# the previous means); the q(alpha) step is closed form.  The ELBO of the ARD
# model is the engine's ELBO with its Gaussian prior terms for the ARD
# coefficients replaced by E_q log N(beta_g; 0, alpha_g^-1 I) - KL(q(alpha)).
ard_cavi <- function(model, prior, groups, blocks, init, control) {
  j <- which(!is.na(groups))
  G <- max(c(0L, groups), na.rm = TRUE)
  dg <- tabulate(groups[j], G)
  a0 <- prior$shape; b0 <- prior$rate
  a <- rep(a0, G); b <- rep(b0, G)
  model$prior_type[j] <- 0L
  model$prior_location[j] <- 0
  trace <- numeric(0)
  status <- 0L; iters <- 0L; core <- NULL; elbo <- -Inf
  for (it in seq_len(control$maxit)) {
    lam <- a / b
    model$prior_scale[j] <- 1 / sqrt(lam[groups[j]])
    core <- .Call(C_glm_cavi, model, init, blocks, control)
    iters <- iters + as.integer(core$iterations)
    if (core$status != 0L) { status <- core$status; break }
    ebb <- core$mu[j]^2 + diag(core$Sigma)[j]
    sum_g <- function(v) vapply(seq_len(G), function(k) sum(v[groups[j] == k]), numeric(1))
    # the engine's Gaussian prior terms for the ARD coefficients at lam
    p_eng <- sum(-0.5 * log(2 * pi) + 0.5 * log(lam[groups[j]]) - 0.5 * lam[groups[j]] * ebb)
    a <- a0 + dg / 2
    b <- b0 + sum_g(ebb) / 2
    p_ard <- sum(dg * (-0.5 * log(2 * pi) + 0.5 * (digamma(a) - log(b))) - 0.5 * (a / b) * sum_g(ebb)) -
      sum(kl_gamma(a, b, a0, b0))
    new <- core$elbo - p_eng + p_ard
    trace <- c(trace, new)
    if (!is.finite(new)) { status <- 4L; break }
    if (it > 1L && new < elbo - 1e-10 * (1 + abs(elbo))) { status <- 5L; break }
    done <- it > 1L && tol_met(elbo, new, control$tol)
    elbo <- new
    init[seq_along(core$mu)] <- core$mu
    if (!is.null(core$tau)) init[length(core$mu) + 1:2] <- core$tau
    if (done) break
    if (it == control$maxit) status <- 1L
  }
  if (!is.null(core)) {
    core$elbo <- if (length(trace)) trace[length(trace)] else core$elbo
    core$kl <- core$loglik - core$elbo
    core$trace <- trace
  }
  core$status <- status
  core$iterations <- iters
  S <- if (is.null(core$Sigma)) NULL else diag(core$Sigma)[j]
  core$ard <- list(shape = a, rate = b, groups = as.vector(groups), labels = attr(groups, "labels"), size = dg,
                   trSigma = if (is.null(S)) NA else vapply(seq_len(G), function(k) sum(S[groups[j] == k]), numeric(1)),
                   sweeps = length(trace))
  core
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
