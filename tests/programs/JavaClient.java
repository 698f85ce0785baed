import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.InetAddress;
import java.net.URL;
import java.util.Hashtable;
import javax.naming.Context;
import javax.naming.NamingEnumeration;
import javax.naming.directory.Attribute;
import javax.naming.directory.Attributes;
import javax.naming.directory.DirContext;
import javax.naming.directory.InitialDirContext;

/**
 * A JVM test client for mirrortrace: the JVM is a large multi-threaded glibc program whose
 * InetAddress goes through getaddrinfo while JNDI's DNS provider speaks DNS itself (reading
 * resolv.conf on its own), so both paths need checking.
 *
 * <pre>
 * java -cp DIR JavaClient URL          GET with HttpURLConnection, body on stdout
 * java -cp DIR JavaClient lookup NAME  InetAddress.getAllByName: one address per line
 * java -cp DIR JavaClient jndi NAME    JNDI DNS A records (server from resolv.conf)
 * </pre>
 *
 * Failures print "error: ExceptionClass: message" on stderr and exit 1.
 */
public final class JavaClient {
    private JavaClient() {}

    private static void get(String url) throws Exception {
        HttpURLConnection conn = (HttpURLConnection) new URL(url).openConnection();
        conn.setConnectTimeout(60_000);
        conn.setReadTimeout(60_000);
        int status = conn.getResponseCode();
        InputStream in = status >= 400 ? conn.getErrorStream() : conn.getInputStream();
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        if (in != null) {
            in.transferTo(out);
            in.close();
        }
        System.out.write(out.toByteArray());
        System.out.flush();
        if (status >= 400) {
            throw new RuntimeException("HTTP status " + status);
        }
    }

    private static void lookup(String name) throws Exception {
        for (InetAddress addr : InetAddress.getAllByName(name)) {
            System.out.println(addr.getHostAddress());
        }
    }

    private static void jndi(String name) throws Exception {
        Hashtable<String, String> env = new Hashtable<>();
        env.put(Context.INITIAL_CONTEXT_FACTORY, "com.sun.jndi.dns.DnsContextFactory");
        // No PROVIDER_URL: the provider takes the nameservers from /etc/resolv.conf.
        DirContext ctx = new InitialDirContext(env);
        try {
            Attributes attrs = ctx.getAttributes(name, new String[] {"A"});
            Attribute a = attrs.get("A");
            if (a == null) {
                throw new RuntimeException("no A record for " + name);
            }
            NamingEnumeration<?> values = a.getAll();
            while (values.hasMore()) {
                System.out.println(values.next());
            }
        } finally {
            ctx.close();
        }
    }

    public static void main(String[] args) {
        try {
            if (args.length == 1 && args[0].contains("://")) {
                get(args[0]);
            } else if (args.length == 2 && args[0].equals("lookup")) {
                lookup(args[1]);
            } else if (args.length == 2 && args[0].equals("jndi")) {
                jndi(args[1]);
            } else {
                System.err.println("usage: JavaClient URL | lookup NAME | jndi NAME");
                System.exit(2);
            }
        } catch (Exception e) {
            System.out.flush();
            System.err.println("error: " + e.getClass().getName() + ": " + e.getMessage());
            System.exit(1);
        }
        System.exit(0);
    }
}
