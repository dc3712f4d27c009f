using System.Numerics;

namespace FastAttention.Polynomial;

/// <summary>How a polynomial approximation of <c>e^x</c> is built.</summary>
public enum ExpFitMethod
{
    /// <summary>Interpolation at the Chebyshev nodes of <c>[-R, R]</c>: near-minimax, about 30% lower degree than Taylor once R &gt;= 2.</summary>
    Chebyshev,

    /// <summary>The Taylor polynomial at 0: the classical construction, kept for comparison.</summary>
    Taylor,
}

/// <summary>
/// A polynomial <c>P(x) = sum_t c_t x^t</c> approximating <c>e^x</c> on <c>[-Range, Range]</c> with
/// <b>relative</b> error <see cref="RelativeError"/>, measured, not assumed (docs/algorithms.md §2, step 1;
/// relative error keeps every approximate attention weight positive). The coefficients are monomial in
/// <c>x</c>, as the polynomial method's feature maps need them.
/// </summary>
/// <param name="Method">How it was built.</param>
/// <param name="Range">R: the interval is <c>[-R, R]</c>.</param>
/// <param name="Degree">g.</param>
/// <param name="Coefficients">c_0 .. c_g, monomial in x.</param>
/// <param name="RelativeError">max (|P(x) - e^x| + a bound on evaluating P in double) / e^x over a dense grid of the interval (see <see cref="ExpPolynomial.GridPoints"/>).</param>
public sealed record ExpPolynomial(ExpFitMethod Method, double Range, int Degree, IReadOnlyList<double> Coefficients, double RelativeError)
{
    /// <summary>Points of the dense grid the error is measured on (plus the interpolation nodes and both ends).</summary>
    public const int GridPoints = 20_001;

    /// <summary>The coarse grid <see cref="Fit"/> screens degrees with: every 80th point of the dense grid.</summary>
    private const int CoarseGridPoints = ((GridPoints - 1) / 80) + 1;

    /// <summary>Unit roundoff of double, 2^-53.</summary>
    private const double UnitRoundoff = 1.1102230246251565e-16;

    /// <summary>The largest degree <see cref="Fit"/> tries before giving up.</summary>
    public const int MaxDegree = 80;

    /// <summary>P(x) by Horner's rule in double.</summary>
    /// <param name="x">The argument.</param>
    /// <returns>P(x).</returns>
    public double Evaluate(double x)
    {
        double sum = 0;
        for (int t = Coefficients.Count - 1; t >= 0; t--)
        {
            sum = (sum * x) + Coefficients[t];
        }

        return sum;
    }

    /// <summary>The lowest-degree polynomial of the given method whose measured relative error on <c>[-range, range]</c> is at most <paramref name="relativeError"/>.</summary>
    /// <param name="range">R &gt; 0.</param>
    /// <param name="relativeError">The target eps, in (0, 1).</param>
    /// <param name="method">Chebyshev (default) or Taylor.</param>
    /// <returns>The polynomial with its measured error.</returns>
    /// <exception cref="ArgumentOutOfRangeException">R or eps is out of range, or no degree up to <see cref="MaxDegree"/> reaches eps.</exception>
    public static ExpPolynomial Fit(double range, double relativeError, ExpFitMethod method = ExpFitMethod.Chebyshev)
    {
        CheckRange(range);
        if (!(relativeError > 0 && relativeError < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(relativeError), relativeError, "The target relative error must lie in (0, 1).");
        }

        // A relative error below ~eps_double e^(2R) cannot be certified in double precision: the values at
        // -R are e^(2R) times smaller than those at R (the bounded-entry requirement, seen numerically).
        double floor = PrecisionFloor(range);
        if (relativeError < floor)
        {
            throw new ArgumentOutOfRangeException(nameof(relativeError), relativeError,
                $"Relative error {NumberText.Format(relativeError)} on [-{range}, {range}] is below what double precision can certify there (~{NumberText.Format(floor, 2)} = 1e-15 e^(2R)); " +
                "the range is too wide for the polynomial method at this accuracy (use exact attention, or a looser eps).");
        }

        for (int degree = 0; degree <= MaxDegree; degree++)
        {
            // A coarse grid first: its error is a lower bound of the dense grid's (a subset of its points
            // plus the same nodes), so a degree it rejects is rejected for sure, at 1/80 of the cost.
            double[] coefficients = FitCoefficients(range, degree, method);
            var coarse = new ExpPolynomial(method, range, degree, coefficients, 0);
            if (coarse.MeasureRelativeError(CoarseGridPoints) > relativeError)
            {
                continue;
            }

            ExpPolynomial candidate = coarse with { RelativeError = coarse.MeasureRelativeError(GridPoints) };
            if (candidate.RelativeError <= relativeError)
            {
                return candidate;
            }
        }

        throw new ArgumentOutOfRangeException(nameof(range), range,
            $"No {method} polynomial of degree <= {MaxDegree} reaches relative error {NumberText.Format(relativeError)} on [-{range}, {range}]; the range is too wide for the polynomial method (use exact attention).");
    }

    /// <summary>The polynomial of a given degree and method, with its measured relative error.</summary>
    /// <param name="range">R &gt; 0.</param>
    /// <param name="degree">g &gt;= 0.</param>
    /// <param name="method">Chebyshev (default) or Taylor.</param>
    /// <returns>The polynomial.</returns>
    public static ExpPolynomial OfDegree(double range, int degree, ExpFitMethod method = ExpFitMethod.Chebyshev)
    {
        CheckRange(range);
        ArgumentOutOfRangeException.ThrowIfNegative(degree);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(degree, MaxDegree);
        var polynomial = new ExpPolynomial(method, range, degree, FitCoefficients(range, degree, method), 0);
        return polynomial with { RelativeError = polynomial.MeasureRelativeError(GridPoints) };
    }

    private static double[] FitCoefficients(double range, int degree, ExpFitMethod method) =>
        method == ExpFitMethod.Taylor ? TaylorCoefficients(degree) : ChebyshevCoefficients(range, degree);

    /// <summary>The smallest relative error worth asking for on [-R, R] in double precision: about 1e-15 e^(2R).</summary>
    /// <param name="range">R.</param>
    /// <returns>The floor.</returns>
    public static double PrecisionFloor(double range) => 1e-15 * Math.Exp(2 * range);

    private double MeasureRelativeError(int gridPoints)
    {
        // The measured error plus a bound on Horner's own rounding at that point ((2g + 1) unit
        // roundoffs of sum |c_t| |x|^t), so the certificate also covers where rounding, not the
        // approximation, dominates (wide ranges, near the double-precision floor).
        double worst = 0;
        void Check(double x)
        {
            double exact = Math.Exp(x);
            double magnitude = 0;
            for (int t = Coefficients.Count - 1; t >= 0; t--)
            {
                magnitude = (magnitude * Math.Abs(x)) + Math.Abs(Coefficients[t]);
            }

            double rounding = ((2 * Degree) + 1) * UnitRoundoff * magnitude;
            worst = Math.Max(worst, (Math.Abs(Evaluate(x) - exact) + rounding) / exact);
        }

        for (int i = 0; i < gridPoints; i++)
        {
            Check(Range * ((2.0 * i / (gridPoints - 1)) - 1));
        }

        // Between the interpolation nodes the error peaks near the Chebyshev extrema: check those too.
        for (int i = 0; i <= Degree + 1; i++)
        {
            Check(Range * Math.Cos(Math.PI * i / (Degree + 1)));
        }

        return worst;
    }

    private static double[] TaylorCoefficients(int degree)
    {
        double[] c = new double[degree + 1];
        double term = 1;
        for (int t = 0; t <= degree; t++)
        {
            c[t] = term;
            term /= t + 1;
        }

        return c;
    }

    /// <summary>
    /// Interpolates e^(R u) at the g + 1 Chebyshev nodes of u in [-1, 1], giving Chebyshev coefficients
    /// a_k, then converts sum a_k T_k(u) to monomials. The conversion multiplies a_k by the integer
    /// coefficients of T_k, which grow like 2^k and alternate in sign: summed in double they would
    /// cancel away the small values at the left end of the interval (e^-R), so the products are summed
    /// in <see cref="decimal"/> (28 significant digits) and rounded to double once. The function is
    /// interpolated as e^(R u) / e^R, so every product stays far inside decimal's range. Finally u = x / R.
    /// </summary>
    private static double[] ChebyshevCoefficients(double range, int degree)
    {
        int n = degree + 1;
        double[] values = new double[n];
        double[] nodes = new double[n];
        for (int i = 0; i < n; i++)
        {
            nodes[i] = Math.Cos(Math.PI * (i + 0.5) / n);
            values[i] = Math.Exp(range * (nodes[i] - 1)); // e^(R u) / e^R, in (0, 1]: keeps the decimal sums small
        }

        double[] a = new double[n];
        for (int k = 0; k < n; k++)
        {
            double sum = 0;
            for (int i = 0; i < n; i++)
            {
                sum += values[i] * Math.Cos(k * Math.PI * (i + 0.5) / n);
            }

            a[k] = (k == 0 ? 1.0 : 2.0) * sum / n;
        }

        // Monomial coefficients of T_0 .. T_g by T_{k+1} = 2u T_k - T_{k-1}, exactly.
        var previous = new BigInteger[n];
        var current = new BigInteger[n];
        previous[0] = 1;
        if (n > 1)
        {
            current[1] = 1;
        }

        decimal[] monomial = new decimal[n];
        monomial[0] += (decimal)a[0];
        for (int k = 1; k < n; k++)
        {
            for (int m = 0; m <= k; m++)
            {
                if (!current[m].IsZero)
                {
                    monomial[m] += (decimal)a[k] * (decimal)current[m];
                }
            }

            var next = new BigInteger[n];
            if (k + 1 < n)
            {
                for (int m = 0; m <= k; m++)
                {
                    next[m + 1] += 2 * current[m];
                    next[m] -= previous[m];
                }
            }

            previous = current;
            current = next;
        }

        // Undo the e^R normalisation; u = x / R: the coefficient of x^m is that of u^m divided by R^m.
        double[] c = new double[n];
        double scale = Math.Exp(-range);
        for (int m = 0; m < n; m++)
        {
            c[m] = (double)monomial[m] / scale;
            scale *= range;
        }

        return c;
    }

    private static void CheckRange(double range)
    {
        if (!(range > 0) || !double.IsFinite(range))
        {
            throw new ArgumentOutOfRangeException(nameof(range), range, "The range R must be a finite number greater than 0.");
        }
    }
}
